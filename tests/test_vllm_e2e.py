"""The vLLM backend, end to end, in the vLLM environment (.venv-vllm; skipped when it was not built,
failing under CI).

* ``swift sft`` (main environment) on the tiny model with head_dim 64 (vLLM's CPU attention rejects 16), full
  fine-tuning, tied head;
* ``INFER_BACKEND=vllm DECODING=constrained bash shell/eval.sh`` on the tied checkpoint (the vLLM environment's
  ``swift infer``, eval.sh's KV-cache default, its row check, ``coord-eval``): every answer parses completely,
  coordinate slots carry the restricted log-probabilities; the greedy tokens equal those of
  ``--infer_backend transformers`` (fp32 on both);
* an untied mixture-of-experts checkpoint (head_dim 64; the 30B-A3B shape), trained by ``swift sft`` with LoRA
  (embedding and head in ``modules_to_save``), merged by ``swift export --merge_lora`` and copied by
  ``coord-export-vllm`` (vLLM's expert layout and ``norm_topk_prob``), loads into vLLM and answers with coordinate
  tokens under ``coordexp``, token-identical to the transformers backend on the merged checkpoint (the CoordExp
  bins agree, so the trained rows of the untied head were loaded: a wrong head would move the expectations).

The logits processors inside vLLM's samplers are checked once, in ``test_vllm_decoding.py``
(``vllm_env_processor_checks.py``; they read only the checkpoint's tokenizer and generation config). Each vLLM run
here loads the model once (about 45 s on 2 cores).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (REPO, base_infer_args, base_sft_args, last_checkpoint, read_jsonl, run_swift, swift_env,
                     vllm_venv_or_skip)

from swift_coord_plugin.core import codec
from swift_coord_plugin.eval.decoding_info import record_path
from swift_coord_plugin.eval.results import END_OF_TURN_TOKENS

pytestmark = pytest.mark.e2e

GT = REPO / "assets" / "coco_sample" / "instances.json"
IMAGE_IDS = (30, 92)  # two samples with two objects each: short sequences
STEPS = 24            # enough at lr 1e-2 for the tiny model to write objects
MAX_NEW_TOKENS = 40
TOP_K = 5


@pytest.fixture(scope="module")
def vllm_bin() -> Path:
    return vllm_venv_or_skip()


@pytest.fixture(scope="module")
def two_samples(sample_jsonl, tmp_path_factory) -> str:
    rows = [r for r in read_jsonl(sample_jsonl) if r["image_id"] in IMAGE_IDS]
    path = tmp_path_factory.mktemp("vllm_data") / "two.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _train(model_dir, data, tmp) -> str:
    out = str(tmp / "sft")
    extra = ["--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
             "--weight_decay", "0", "--freeze_vit", "true", "--freeze_aligner", "true"]
    run_swift("sft", base_sft_args(model_dir, data, out, steps=STEPS, extra=extra), tmp)
    return last_checkpoint(out)


@pytest.fixture(scope="module")
def tied_ckpt(vllm_bin, tiny_model_head64_dir, two_samples, tmp_path_factory) -> str:
    return _train(tiny_model_head64_dir, two_samples, tmp_path_factory.mktemp("vllm_tied"))


@pytest.fixture(scope="module")
def moe_merged(vllm_bin, two_samples, tmp_path_factory) -> str:
    """A MoE model trained with LoRA (``modules_to_save`` embedding and head) and merged by ``swift export
    --merge_lora``: the merged checkpoint is what a LoRA user serves (full fine-tuning of the MoE reloads in
    test_vocab_paths_e2e.py; the exporter's path is the same for both)."""
    from swift_coord_plugin.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("vllm_moe")
    model = build_tiny_model(str(tmp / "tiny_moe_head64"), moe=True, head_dim=64, tie_word_embeddings=False)
    out = str(tmp / "sft")
    extra = ["--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
             "--weight_decay", "0", "--freeze_vit", "true", "--freeze_aligner", "true",
             "--modules_to_save", "embed_tokens", "lm_head", "--lora_rank", "4"]
    # Twice the full fine-tuning's steps: with the experts and attention behind rank-4 adapters the model needs
    # them to prefer <obj_start> over the end of the turn as its first token (24 steps: a near tie, empty answers).
    run_swift("sft", base_sft_args(model, two_samples, out, steps=2 * STEPS, tuner="lora", extra=extra), tmp)
    merged = tmp / "merged"
    run_swift("export", ["--adapters", last_checkpoint(out), "--merge_lora", "true", "--output_dir", str(merged)],
              tmp)
    return str(merged)


def _infer_args(ckpt, data, result, backend, top_k=TOP_K):
    args = base_infer_args(ckpt, data, str(result), max_new_tokens=MAX_NEW_TOKENS,
                           extra=["--torch_dtype", "float32", "--logprobs", "true", "--top_logprobs", str(top_k)])
    args[args.index("--infer_backend") + 1] = backend
    if backend == "vllm":
        args += ["--vllm_max_model_len", "4096", "--vllm_enforce_eager", "true"]
    return args


def infer_vllm(vllm_bin, ckpt, data, result, decoding, cwd):
    """``swift infer --infer_backend vllm`` with the vLLM environment's swift; returns the result rows."""
    env = swift_env({"COORD_DECODING": decoding, "COORD_DECODING_RECORD": record_path(str(result)),
                     "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO),
                     "VIRTUAL_ENV": str(vllm_bin.parent), "PATH": f"{vllm_bin}{os.pathsep}{os.environ['PATH']}"})
    cmd = [str(vllm_bin / "swift"), "infer", *map(str, _infer_args(ckpt, data, result, "vllm"))]
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    Path(cwd, f"swift-infer-vllm-{decoding}.log").write_text(proc.stdout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n...{proc.stdout[-6000:]}"
    return read_jsonl(result)


def infer_transformers(ckpt, data, result, decoding, cwd):
    run_swift("infer", _infer_args(ckpt, data, result, "transformers"), cwd, env={"COORD_DECODING": decoding})
    return read_jsonl(result)


def tokens(row):
    return [t["token"] for t in row["logprobs"]["content"]]


def assert_same_greedy_answers(vllm_rows, hf_rows, coordexp=False):
    """Token-identical answers; on a mismatch say where and by how much the two backends' log-probabilities
    of the diverging tokens differ. Under coordexp, vLLM records the emitted coordinate token with the
    restricted mode's log-probability (the two bins exchanged, see vllm_decoding.py)."""
    assert len(vllm_rows) == len(hf_rows)
    by_id = {r["chat_template_kwargs"]["coord_meta"]["image_id"]: r for r in hf_rows}
    for v in vllm_rows:
        h = by_id[v["chat_template_kwargs"]["coord_meta"]["image_id"]]
        tv, th = tokens(v), tokens(h)
        if tv != th:
            i = next(i for i, (a, b) in enumerate(zip(tv + [None], th + [None])) if a != b)
            lv = {t["token"]: t["logprob"] for t in v["logprobs"]["content"][i]["top_logprobs"]}
            lh = {t["token"]: t["logprob"] for t in h["logprobs"]["content"][i]["top_logprobs"]}
            pytest.fail(f"backends diverge at token {i}: vllm {tv[i:i + 3]} vs transformers {th[i:i + 3]}; "
                        f"top log-probabilities there: vllm {lv}, transformers {lh}")
        for a, b in zip(v["logprobs"]["content"], h["logprobs"]["content"]):
            want = b["logprob"]
            if coordexp and codec.coord_bin_of(b["token"]) is not None:
                want = max(t["logprob"] for t in b["top_logprobs"])
            assert math.isclose(a["logprob"], want, abs_tol=1e-3), (a, b)
        assert v["response"] == h["response"]


def test_eval_script_on_vllm_constrained_same_tokens_as_transformers(vllm_bin, tied_ckpt, two_samples, tmp_path):
    """``INFER_BACKEND=vllm bash shell/eval.sh`` as a user runs it: the vLLM environment's swift with eval.sh's own
    KV-cache default (``VLLM_CPU_KVCACHE_SPACE`` unset), the row check against ``VAL_DATA``, then coord-eval."""
    out = tmp_path / "run"
    env = swift_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OUT": str(out),
                     "CKPT": tied_ckpt, "GT": str(GT), "VAL_DATA": two_samples, "INFER_BACKEND": "vllm",
                     "DECODING": "constrained", "VLLM_VENV": str(vllm_bin.parent),
                     "VLLM_ARGS": "--vllm_max_model_len 4096 --vllm_enforce_eager true"})
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    proc = subprocess.run(["bash", str(REPO / "shell" / "eval.sh"), "--torch_dtype", "float32",
                           "--top_logprobs", str(TOP_K), "--max_new_tokens", str(MAX_NEW_TOKENS)],
                          cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    (tmp_path / "eval.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert f"{vllm_bin / 'swift'} infer" in proc.stdout, proc.stdout[-3000:]
    assert f"{len(IMAGE_IDS)} result rows = the {len(IMAGE_IDS)} rows" in proc.stdout, proc.stdout[-3000:]
    rows = read_jsonl(out / "eval" / "infer_result.jsonl")
    assert len(rows) == len(IMAGE_IDS)
    n_objects = 0
    for row in rows:
        content = row["logprobs"]["content"]
        assert len(content) <= MAX_NEW_TOKENS  # the command line's flags won over the config's
        parsed = codec.parse_pieces([t["token"] for t in content if t["token"] not in END_OF_TURN_TOKENS])
        # Every object complete; a repeated object (the model's choice, dropped by the parser's duplicate rule)
        # and a reversed pair (repaired) are not grammar failures.
        assert set(parsed.counts) <= {"repaired_reversed_coordinates", "dropped_duplicate"}, \
            (row["response"], parsed.counts)
        n_objects += len(parsed.objects)
        for t in content:
            if codec.coord_bin_of(t["token"]) is None:
                continue
            # The restricted distribution: every alternative is a coordinate token, the emitted one the mode.
            top = t["top_logprobs"]
            assert top and len(top) <= TOP_K and all(codec.coord_bin_of(a["token"]) is not None for a in top), top
            assert t["logprob"] >= max(a["logprob"] for a in top) - 1e-6
            assert sum(math.exp(a["logprob"]) for a in top) <= 1 + 1e-4
    assert n_objects > 0, [r["response"] for r in rows]

    report = json.loads((out / "eval" / "report.json").read_text())
    settings = report["settings"]
    assert (settings["decoding"], settings["infer_backend"]) == ("constrained", "vllm"), settings
    assert settings["logprobs_distribution"].startswith("grammar"), settings
    assert report["counts"]["rows"]["total"] == len(IMAGE_IDS)
    assert report["counts"]["objects"]["parsed"] == n_objects
    assert not any(n for k, n in report["counts"]["parser"].items()
                   if k.startswith("dropped_") and k != "dropped_duplicate"), report["counts"]

    hf = infer_transformers(tied_ckpt, two_samples, tmp_path / "hf.jsonl", "constrained", tmp_path)
    assert_same_greedy_answers(rows, hf)


def test_merged_moe_checkpoint_exported_for_vllm_coordexp_like_transformers(vllm_bin, moe_merged, two_samples,
                                                                            tmp_path):
    config = json.loads(Path(moe_merged, "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]
    assert "norm_topk_prob" not in config["text_config"]
    assert config.get("tie_word_embeddings") is False or config["text_config"].get("tie_word_embeddings") is False
    copy = tmp_path / "for_vllm"
    proc = subprocess.run([sys.executable, "-m", "swift_coord_plugin.cli.export_vllm", moe_merged, str(copy)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env=swift_env({"PYTHONPATH": str(REPO)}))
    assert proc.returncode == 0 and "transposed 4 fused expert weights" in proc.stdout, proc.stdout[-3000:]
    rows = infer_vllm(vllm_bin, str(copy), two_samples, tmp_path / "vllm.jsonl", "coordexp", tmp_path)
    assert len(rows) == len(IMAGE_IDS)
    assert all(codec.COORD_TOKEN_RE.search(r["response"]) for r in rows), [r["response"] for r in rows]
    hf = infer_transformers(moe_merged, two_samples, tmp_path / "hf.jsonl", "coordexp", tmp_path)
    assert_same_greedy_answers(rows, hf, coordexp=True)
