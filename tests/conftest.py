"""Shared fixtures: the tiny Qwen3-VL (built once per test session) and the shipped samples."""
from __future__ import annotations

import json
import os
import resource
import time

import pytest

from helpers import MAX_PIXELS, SAMPLE_JSONL, absolute_samples, read_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The image resolution of every `swift` run of the tests (helpers.swift_env), also in this process: ms-swift's
# Qwen3-VL template takes MAX_PIXELS from the environment when it is first imported, so a model loaded here
# sees the images as the CLI did.
os.environ.setdefault("MAX_PIXELS", MAX_PIXELS)

# The test files that take longest (CPU seconds on the 2-core test machine, bench/results_suite.md), longest first.
# shell/test.sh gives pytest-xdist whole files in collection order (--dist loadfile --no-loadscope-reorder), so
# these start first and the short files fill the gaps: with alphabetical order the science test (seven minutes on
# three processes) started last and the suite ended with one worker idle for most of it.
SLOWEST_FIRST = (
    "test_science.py", "test_vocab_paths_e2e.py", "test_vllm_e2e.py", "test_lean_swift.py", "test_loss_swift.py",
    "test_experiment.py", "test_cluster_scripts.py", "test_swift_glue.py", "test_decoding_e2e.py",
    "test_group_a_e2e.py", "test_gpu_acceptance.py", "test_vllm_decoding.py", "test_lean.py",
    "test_prepare_coco.py", "test_dataset_inputs.py",
)


def pytest_collection_modifyitems(config, items):
    """Run the files of ``SLOWEST_FIRST`` first, in that order; the others after them as collected."""
    here = os.path.dirname(os.path.abspath(__file__))
    missing = [f for f in SLOWEST_FIRST if not os.path.isfile(os.path.join(here, f))]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOWEST_FIRST names files that do not exist: {missing}")
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``COORD_TEST_CPU_LOG=FILE``, append per test: node id, worker, start time, wall seconds and CPU seconds
    (this process and the subprocesses it waited for), the numbers behind ``SLOWEST_FIRST`` and
    bench/results_suite.md."""
    log = os.environ.get("COORD_TEST_CPU_LOG")
    if not log:
        yield
        return

    def cpu():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    c0, t0 = cpu(), time.time()
    yield
    with open(log, "a") as f:
        f.write(f"{item.nodeid}\t{os.environ.get('PYTEST_XDIST_WORKER', '-')}\t{t0:.1f}\t{time.time() - t0:.1f}\t"
                f"{cpu() - c0:.1f}\n")


@pytest.fixture(scope="session", autouse=True)
def image_check_cache(tmp_path_factory) -> str:
    """The full-decode cache of the image checks in a temporary folder (also for the swift subprocesses)."""
    from swift_coord_plugin.data.images import CACHE_ENV

    folder = str(tmp_path_factory.mktemp("image_checks"))
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = folder
    yield folder
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Qwen3-VL (tied head) with the real tokenizer, as ``coord-make-tiny-model`` builds it."""
    from swift_coord_plugin.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen3_vl")))


@pytest.fixture(scope="session")
def tiny_model_untied_dir(tmp_path_factory) -> str:
    from swift_coord_plugin.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen3_vl_untied")), tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_model_moe_dir(tmp_path_factory) -> str:
    """A tiny random mixture-of-experts Qwen3-VL (``coord-make-tiny-model --moe --untied``: untied, like 30B-A3B)."""
    from swift_coord_plugin.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen3_vl_moe")), tie_word_embeddings=False, moe=True)


@pytest.fixture(scope="session")
def tiny_model_head64_dir(tmp_path_factory) -> str:
    """The tiny model with head_dim 64 (tied head): vLLM's CPU attention rejects the default 16."""
    from swift_coord_plugin.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen3_vl_head64")), head_dim=64)


@pytest.fixture(scope="session")
def sample_jsonl(tmp_path_factory) -> str:
    """The shipped COCO samples with absolute image paths."""
    return absolute_samples(SAMPLE_JSONL, tmp_path_factory.mktemp("samples") / "samples.jsonl")


@pytest.fixture(scope="module")
def four_samples(sample_jsonl, tmp_path_factory):
    """The first four shipped samples (all with objects), one file per test module."""
    rows = read_jsonl(sample_jsonl)[:4]
    assert all(r["objects"] for r in rows)
    path = tmp_path_factory.mktemp("four") / "four.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def coord_tokenizer():
    """Qwen3-VL's tokenizer with the plugin's 1002 tokens added (what the model type does at load); no model."""
    from swift_coord_plugin.core import codec
    from swift_coord_plugin.tiny_model import build_tokenizer

    tok = build_tokenizer()
    tok.add_tokens(codec.new_tokens(), special_tokens=True)
    return tok
