"""The vLLM side of decoding: engine arguments per mode, the run's record, and the CoordExp bin exchange (no
vLLM needed); the processors themselves in the vLLM environment (``vllm_env_processor_checks.py``, run from
here on the plugin's tokenizer; skipped when that environment was not built)."""
import json
import subprocess

import pytest
import torch

from swift_coord_plugin.core import grammar as G
from swift_coord_plugin.swift_ext import vllm_decoding as VD
from swift_coord_plugin.swift_ext.decoding import DecodingConfig


@pytest.mark.parametrize("mode", G.MODES)
def test_engine_kwargs_and_record(mode, tmp_path, monkeypatch):
    record = tmp_path / "r.json"
    monkeypatch.setenv("COORD_DECODING_RECORD", str(record))
    kwargs = VD.engine_kwargs(DecodingConfig(mode=mode))
    if mode == G.FREE:
        assert kwargs == {}  # vLLM as it is: raw full-vocabulary log-probabilities
    else:
        assert kwargs == {"logits_processors": [VD.PROCESSOR_FQCN], "logprobs_mode": "processed_logprobs"}
        module, cls = VD.PROCESSOR_FQCN.split(":")
        assert module == VD.__name__ and cls == "CoordGrammarLogitsProcessor"
    rec = json.loads(record.read_text())
    assert rec["decoding"] == mode and rec["infer_backend"] == "vllm"
    assert rec["logprobs"] == VD.logprobs_distribution(mode)


def test_record_is_read_by_coord_eval(tmp_path, monkeypatch):
    from swift_coord_plugin.eval.decoding_info import record_path, resolve

    results = tmp_path / "infer.jsonl"
    monkeypatch.setenv("COORD_DECODING_RECORD", record_path(str(results)))
    VD.engine_kwargs(DecodingConfig(mode=G.COORDEXP))
    settings, warning = resolve(str(results), None, None)
    assert warning is None
    assert settings["decoding"] == "coordexp" and settings["infer_backend"] == "vllm"
    assert settings["logprobs_distribution"] == VD.LOGPROBS_COORDEXP_SWAPPED


def test_swap_in_coordexp_bins_is_a_permutation_of_the_restricted_distribution():
    gen = torch.Generator().manual_seed(0)
    start, bins, vocab = 5, 50, 60
    logits = torch.full((8, vocab), float("-inf"))
    logits[:, start:start + bins] = torch.randn(8, bins, generator=gen) * 3
    logits[0, start + 7] = logits[0, start + 9] = 100.0  # a tie at the mode
    before = torch.log_softmax(logits.double(), -1)
    chosen = start + torch.randint(0, bins, (8,), generator=gen)
    chosen[1] = start + int(logits[1].argmax()) - start  # the chosen bin is already the mode
    out = logits.clone()
    VD.swap_in_coordexp_bins(out, torch.arange(8), chosen, start, bins)
    after = torch.log_softmax(out.double(), -1)
    assert torch.equal(out.argmax(-1), chosen)  # vLLM's greedy sampler emits the CoordExp bin
    for r in range(8):
        k, m = int(chosen[r]), int(logits[r].argmax())
        want = before[r].clone()
        want[k], want[m] = before[r, m], before[r, k]
        torch.testing.assert_close(after[r], want, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tokenizer_folder(coord_tokenizer, tmp_path_factory) -> str:
    """What the vLLM processors read from a checkpoint: the plugin's tokenizer and the generation config's eos."""
    from transformers import GenerationConfig

    folder = tmp_path_factory.mktemp("coord_tokenizer")
    coord_tokenizer.save_pretrained(str(folder))
    GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643).save_pretrained(
        str(folder))
    return str(folder)


def test_processors_in_the_vllm_environment(tokenizer_folder):
    """``vllm_env_processor_checks.py`` in the vLLM environment: the V2 processor through vLLM's V2 loader in a
    harness of Model Runner V2 (200 requests, 8 at a time, slots reused, rows permuted, chunked prefill,
    preemption), token- and log-probability-identical to the V1 processor (driven with asynchronous
    placeholders) and to the transformers backend's processor; placeholders, refusals, answers leaving the
    grammar."""
    from helpers import REPO, swift_env, vllm_venv_or_skip

    vllm_bin = vllm_venv_or_skip()
    env = swift_env({"COORD_TEST_CKPT": tokenizer_folder, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([str(vllm_bin / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
                           str(REPO / "tests" / "vllm_env_processor_checks.py")], cwd=str(REPO), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout and "deselected" not in proc.stdout, \
        proc.stdout[-2000:]
    assert proc.stdout.count("all checks passed") == 2, proc.stdout[-2000:]
