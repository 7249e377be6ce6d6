"""The coordinate vocabulary through every path, end to end with the real ms-swift CLI on the tiny models:
initial rows under ZeRO-2 / ZeRO-3 (under DDP: test_loss_swift.py), full fine-tuning (group A's log and
checkpoint layout) and reload (dense tied, MoE), resume, a moved checkpoint, LoRA with ``modules_to_save`` and
``swift export --merge_lora`` (dense tied, dense untied, MoE), and the mixture-of-experts model (router loss, lean
path). Loading into vLLM (a full fine-tuned dense tied model, a merged untied MoE) is in test_vllm_e2e.py.

Each run is 1-2 steps on the 9 shipped samples; inference compares 2 samples. The runs are module fixtures
shared by the tests that read them.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import (MAX_PIXELS, PLUGIN, REPO, SAMPLE_DIR, base_infer_args, base_sft_args, read_jsonl, rows_digests,
                     run_swift, swift_env)

pytestmark = pytest.mark.e2e

FIRST_NEW = 151669          # <|coord_0|>; the 1002 tokens and the padding rows after them follow
ROWS = 152704
INFER_TOKENS = 24


def _weights(path) -> dict:
    """Every tensor of a checkpoint directory (all ``*.safetensors``) or of one safetensors file."""
    from safetensors.torch import load_file

    files = [path] if str(path).endswith(".safetensors") else sorted(glob.glob(os.path.join(path, "*.safetensors")))
    out = {}
    for f in files:
        out.update(load_file(f))
    assert out, f"no safetensors in {path}"
    return out


def _matrix(weights: dict, name: str) -> torch.Tensor:
    """The one tensor whose key ends with ``name`` (``embed_tokens.weight`` / ``lm_head.weight``)."""
    hits = [k for k in weights if k.endswith(name) and "lora_" not in k]
    assert len(hits) == 1, (name, hits)
    return weights[hits[0]]


def _load(model_dir, **kw):
    """The model as ``--model_type qwen3_vl_coord`` loads it, in this process."""
    from swift.model import get_model_processor
    from swift_coord_plugin.swift_ext.register import register

    register()
    return get_model_processor(str(model_dir), model_type="qwen3_vl_coord", torch_dtype=torch.float32,
                               download_model=False, **kw)


def _initial(model_dir) -> dict:
    """Rows ``FIRST_NEW..`` of the embedding and of the head right after the plugin's load (plain, one process)."""
    model, _ = _load(model_dir)
    emb = model.get_input_embeddings().weight.detach()[FIRST_NEW:].clone()
    head = model.get_output_embeddings().weight.detach()[FIRST_NEW:].clone()
    del model
    return {"embed_tokens.weight": emb, "lm_head.weight": head}


def _sft(model_dir, dataset, out, cwd, *, steps=2, tuner="full", extra=(), launcher_env=None, loss_type=None):
    return run_swift("sft", base_sft_args(model_dir, dataset, str(out), steps=steps, tuner=tuner,
                                          loss_type=loss_type, extra=list(extra)), cwd, launcher_env=launcher_env)


def _infer(cwd, name, model_args, dataset, logprobs: bool = False) -> list:
    """``swift infer`` greedy responses on ``dataset`` (``model_args``: ``--model X`` or ``--adapters Y``); with
    ``logprobs`` the result rows (responses with the top-2 log-probabilities of every token)."""
    result = str(Path(cwd) / f"{name}.jsonl")
    extra = ["--logprobs", "true", "--top_logprobs", "2"] if logprobs else None
    args = base_infer_args("unused", dataset, result, max_new_tokens=INFER_TOKENS, extra=extra)
    i = args.index("--model")
    args[i:i + 2] = list(model_args)
    run_swift("infer", args, cwd)
    rows = read_jsonl(result)
    return rows if logprobs else [r["response"] for r in rows]


def _in_process_answers(ckpt, result_rows, logprobs: bool = False) -> list:
    """Greedy answers of the checkpoint loaded in this process, for the requests ``swift infer`` answered; with
    ``logprobs`` each answer's token log-probabilities (top 2), as ``swift infer`` writes them."""
    from swift.infer_engine import InferRequest, RequestConfig, TransformersEngine
    from swift.template import get_template

    # The image resolution is the CLI's: conftest.py sets MAX_PIXELS for this process before ms-swift is imported.
    assert os.environ.get("MAX_PIXELS") == MAX_PIXELS
    model, processor = _load(ckpt)
    template = get_template(processor, template_type="qwen3_vl_coord", max_pixels=int(MAX_PIXELS))
    engine = TransformersEngine(model, template=template, max_batch_size=4)
    requests = [InferRequest(messages=r["messages"][:-1], images=[im["path"] for im in r["images"]])
                for r in result_rows]
    cfg = RequestConfig(max_tokens=INFER_TOKENS, temperature=0, logprobs=logprobs, top_logprobs=2 if logprobs else None)
    resp = engine.infer(requests, cfg, use_tqdm=False)
    if logprobs:
        return [r.choices[0].logprobs["content"] for r in resp]
    return [r.choices[0].message.content for r in resp]


def _assert_same_greedy_answers(swift_rows, in_process, tol=1e-3):
    """Token by token the same answers with the same log-probabilities (within ``tol``); a divergence is accepted
    only at a near tie (the two top candidates of that step within ``tol`` of each other, the other run's token
    one of them), after which the answers are no longer comparable. A wrong row in the reloaded model moves the
    log-probabilities of every step, far beyond ``tol``."""
    assert len(swift_rows) == len(in_process)
    for row, theirs in zip(swift_rows, in_process):
        ours = row["logprobs"]["content"]
        for i, (a, b) in enumerate(zip(ours, theirs)):
            if a["token"] == b["token"]:
                assert abs(a["logprob"] - b["logprob"]) < tol, (i, a, b)
                continue
            top = sorted(a["top_logprobs"], key=lambda t: -t["logprob"])[:2]
            assert len(top) == 2 and top[0]["logprob"] - top[1]["logprob"] < tol and \
                b["token"] in {t["token"] for t in top}, f"diverge at token {i} without a tie: {a} vs {b}"
            break
        else:
            assert len(ours) == len(theirs), (len(ours), len(theirs))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("vocab_paths")


@pytest.fixture(scope="module")
def infer_jsonl(sample_jsonl, work) -> str:
    rows = read_jsonl(sample_jsonl)[:2]
    path = work / "infer2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------- initial rows under DDP / ZeRO-2 / ZeRO-3

_FIXTURE = {"tied": "tiny_model_dir", "untied": "tiny_model_untied_dir", "moe": "tiny_model_moe_dir"}


# One model per mode keeps the suite short: the untied MoE under ZeRO-2, untied under ZeRO-3 (the case the old
# address comparison got wrong); tied and untied under ZeRO-3 partitioning are also checked in process
# (test_model.py, deepspeed.zero.Init); the tied model's two DDP ranks start from the plain load's rows in
# test_loss_swift.py (test_cli_group_c_two_ranks_equal_one_process, by the rows' digest).
@pytest.mark.parametrize("mode, which", [("zero2", "moe"), ("zero3", "untied")])
def test_initial_rows_identical_under_deepspeed(request, mode, which, sample_jsonl, tmp_path):
    """A run with learning rate 0 saves exactly the rows it started from: they must be bit-identical to a
    plain one-process load, embedding and (untied) head, on every rank. The MoE model (untied) runs with the
    router loss, which under DeepSpeed needs the router logits that ms-swift's forward drops
    (``keep_router_logits``)."""
    model_dir = request.getfixturevalue(_FIXTURE[which])
    want = _initial(model_dir)
    extra, launcher = ["--deepspeed", mode], {"NPROC_PER_NODE": "1"}
    if which == "moe":
        extra += ["--router_aux_loss_coef", "0.001"]
    out = tmp_path / "out"
    proc = _sft(model_dir, sample_jsonl, out, tmp_path, steps=1, launcher_env=launcher,
                extra=extra + ["--learning_rate", "0", "--save_steps", "1"])
    digests = rows_digests(proc.stdout)
    assert len(digests) == 1, digests
    saved = _weights(out / "checkpoint-1")
    emb = _matrix(saved, "embed_tokens.weight")
    assert emb.shape[0] == ROWS
    assert torch.equal(emb[FIRST_NEW:], want["embed_tokens.weight"])
    if which == "tied":
        assert not [k for k in saved if k.endswith("lm_head.weight")]  # one matrix, saved once
    else:
        assert torch.equal(_matrix(saved, "lm_head.weight")[FIRST_NEW:], want["lm_head.weight"])
        assert not torch.equal(want["lm_head.weight"], want["embed_tokens.weight"])
    if which == "moe":
        logs = [r for r in read_jsonl(out / "logging.jsonl") if "global_step/max_steps" in r]
        assert logs and logs[0]["aux_loss"] > 0, logs


# ---------------------------------------------------------------- full fine-tuning: trained, saved, reloaded, resumed

@pytest.fixture(scope="module")
def tied_full(tiny_model_dir, sample_jsonl, work):
    """Dense tied model, full fine-tuning, 2 steps, a checkpoint with optimizer state after each step."""
    out = work / "tied_full"
    proc = _sft(tiny_model_dir, sample_jsonl, out, work, steps=2,
                extra=["--save_steps", "1", "--save_only_model", "false", "--learning_rate", "1e-3"])
    return out, proc.stdout


def _check_full_reload(ckpt, base_dir, infer_jsonl, work, name, untied: bool):
    """Full fine-tuning trained the coordinate rows (embedding, and the separate head when untied); the
    checkpoint reloads with exactly the saved rows (no token added, nothing re-initialised), and ``swift infer``
    on it answers as the checkpoint loaded in this process."""
    init = _initial(base_dir)
    saved_w = _weights(ckpt)
    coord_rows = slice(0, 1002)
    for key in ("embed_tokens.weight",) + (("lm_head.weight",) if untied else ()):
        saved = _matrix(saved_w, key)[FIRST_NEW:]
        changed = (saved[coord_rows] != init[key][coord_rows]).any(1)
        assert changed.float().mean() > 0.5, f"{key}: most coordinate rows should have been trained"
    model, processor = _load(ckpt)
    assert len(processor.tokenizer) == FIRST_NEW + 1002
    assert torch.equal(model.get_input_embeddings().weight.detach()[FIRST_NEW:],
                       _matrix(saved_w, "embed_tokens.weight")[FIRST_NEW:])
    if untied:
        assert torch.equal(model.get_output_embeddings().weight.detach()[FIRST_NEW:],
                           _matrix(saved_w, "lm_head.weight")[FIRST_NEW:])
    del model
    # swift infer on the checkpoint (plugin, model type, template from its args.json) = in-process answers.
    rows = _infer(work, name, ["--model", str(ckpt)], infer_jsonl, logprobs=True)
    assert all(r["chat_template_kwargs"]["coord_meta"]["image_id"] > 0 for r in rows)  # through the data pipeline
    _assert_same_greedy_answers(rows, _in_process_answers(ckpt, rows, logprobs=True))


def _check_checkpoint(ckpt):
    """The saved tokenizer, config, weights and arguments of a full fine-tuning checkpoint of the dense model."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    assert len(tok) == 151669 + 1002
    assert tok.convert_tokens_to_ids("<|coord_0|>") == 151669
    assert tok.convert_tokens_to_ids("<|coord_999|>") == 151669 + 999
    assert tok.convert_tokens_to_ids(["<obj_start>", "<obj_end>"]) == [152669, 152670]
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    vocab = cfg.get("text_config", cfg)["vocab_size"]
    assert vocab == 152704 and vocab % 64 == 0
    with safe_open(os.path.join(ckpt, "model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    emb = [s for k, s in shapes.items() if k.endswith("embed_tokens.weight")]
    assert emb and emb[0][0] == 152704
    args = json.load(open(os.path.join(ckpt, "args.json")))
    assert args["model_type"] == "qwen3_vl_coord" and args["template"] == "qwen3_vl_coord"
    assert all(os.path.isabs(p) for p in args["external_plugins"])


def test_full_finetune_logs_and_checkpoint_layout(tied_full):
    """Group A through the plugin: the added tokens and the dataset's report in the log, a finite loss per step,
    and a checkpoint holding the extended tokenizer, the padded vocabulary and the plugin's arguments."""
    out, stdout = tied_full
    assert "[swift-coord] added 1002 tokens" in stdout
    assert "[swift-coord] dataset" in stdout and "9 kept" in stdout
    losses = [r["loss"] for r in read_jsonl(out / "logging.jsonl") if "loss" in r]
    assert len(losses) == 2 and all(l == l and l > 0 for l in losses)
    _check_checkpoint(str(out / "checkpoint-2"))


def test_full_finetune_trains_the_rows_and_the_checkpoint_reloads_them(tied_full, tiny_model_dir, infer_jsonl, work):
    out, _ = tied_full
    _check_full_reload(out / "checkpoint-2", tiny_model_dir, infer_jsonl, work, "full_ckpt", untied=False)


def test_moe_full_finetune_reloads_with_its_class_and_rows(tiny_model_moe_dir, sample_jsonl, infer_jsonl, work):
    """The mixture-of-experts model (untied head), fully fine-tuned with the router loss: saved under its own
    architecture, trained embedding and head rows, reloaded intact."""
    out = work / "moe_full"
    _sft(tiny_model_moe_dir, sample_jsonl, out, work, steps=2,
         extra=["--learning_rate", "1e-3", "--router_aux_loss_coef", "0.001"])
    ckpt = out / "checkpoint-2"
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3VLMoeForConditionalGeneration"] and cfg["model_type"] == "qwen3_vl_moe"
    _check_full_reload(ckpt, tiny_model_moe_dir, infer_jsonl, work, "moe_full_ckpt", untied=True)


def test_resume_gives_the_uninterrupted_run(tied_full, tiny_model_dir, sample_jsonl, work):
    """Resumed from checkpoint-1 (same seed and data order): the same step-2 loss and bit-identical final
    weights; the checkpoint's rows are loaded over the fresh load's, so nothing of a new initialisation stays."""
    out, _ = tied_full
    resumed = work / "tied_resumed"
    # Another init seed: had anything of the fresh load's initialisation survived, the weights would differ.
    _sft(tiny_model_dir, sample_jsonl, resumed, work, steps=2, launcher_env={"COORD_INIT_SEED": "7"},
         extra=["--save_steps", "1", "--save_only_model", "false", "--learning_rate", "1e-3",
                "--resume_from_checkpoint", str(out / "checkpoint-1")])
    first = {r["global_step/max_steps"]: r["loss"] for r in read_jsonl(out / "logging.jsonl") if "loss" in r}
    again = {r["global_step/max_steps"]: r["loss"] for r in read_jsonl(resumed / "logging.jsonl") if "loss" in r}
    assert again == {"2/2": first["2/2"]}, (first, again)
    a, b = _weights(out / "checkpoint-2"), _weights(resumed / "checkpoint-2")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_moved_checkpoint_needs_the_current_plugin_path(tied_full, infer_jsonl, tmp_path):
    """A checkpoint whose stored plugin path no longer exists (repository moved, another machine): ms-swift
    stops on it unless ``--external_plugins`` is given again, which ``shell/eval.sh`` always does."""
    out, _ = tied_full
    moved = tmp_path / "moved" / "checkpoint-2"
    shutil.copytree(out / "checkpoint-2", moved, ignore=shutil.ignore_patterns("optimizer.pt", "rng_state*"))
    args_path = moved / "args.json"
    args = json.loads(args_path.read_text())
    assert args["external_plugins"] == [PLUGIN]
    args["external_plugins"] = [str(tmp_path / "old-checkout" / "swift_coord_plugin" / "entry" / "swift_plugin.py")]
    args_path.write_text(json.dumps(args))
    result = str(tmp_path / "r.jsonl")
    proc = run_swift("infer", base_infer_args(str(moved), infer_jsonl, result, max_new_tokens=4), tmp_path,
                     check=False)
    assert proc.returncode != 0 and "py_dir" in proc.stdout and "old-checkout" in proc.stdout
    env = swift_env({"CKPT": str(moved), "OUT": str(tmp_path / "eval_out"), "VAL_DATA": infer_jsonl,
                     "GT": str(SAMPLE_DIR / "instances.json"),
                     "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})
    proc = subprocess.run(["bash", str(REPO / "shell" / "eval.sh"), "--max_new_tokens", "8", "--max_pixels",
                           MAX_PIXELS, "--max_batch_size", "2", "--top_logprobs", "2"], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert len(read_jsonl(tmp_path / "eval_out" / "eval" / "infer_result.jsonl")) == 2
    assert (tmp_path / "eval_out" / "eval" / "report.json").is_file()


# ---------------------------------------------------------------- LoRA + modules_to_save, merge

def _check_merge(adapter_ckpt, merged, base_dir, work, name, infer_jsonl):
    """The merged model holds the adapter's trained embedding and head rows (not the base model's), and
    answers as base + adapter (``swift infer --adapters``; the merged model loaded in this process, as
    ``--model_type qwen3_vl_coord`` loads it: ``swift infer`` on a full checkpoint is checked above)."""
    adapter = _weights(Path(adapter_ckpt) / "adapter_model.safetensors")
    merged_w = _weights(merged)
    init = _initial(base_dir)
    for name_ in ("embed_tokens.weight", "lm_head.weight"):
        trained = _matrix(adapter, name_)
        assert trained.shape[0] == ROWS
        assert not torch.equal(trained[FIRST_NEW:], init[name_]), f"{name_}: the adapter did not train the rows"
        assert torch.equal(_matrix(merged_w, name_), trained), f"{name_}: merged rows are not the trained ones"
    base_plus_adapter = _infer(work, f"{name}_adapter", ["--adapters", str(adapter_ckpt)], infer_jsonl,
                               logprobs=True)
    _assert_same_greedy_answers(base_plus_adapter, _in_process_answers(merged, base_plus_adapter, logprobs=True))


def _lora_args(*more):
    return ["--modules_to_save", "embed_tokens", "lm_head", "--lora_rank", "4", "--learning_rate", "1e-3", *more]


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_lora_merge_keeps_the_trained_rows(request, which, sample_jsonl, infer_jsonl, work):
    """Tied (2B/4B-like) and untied (8B-like) dense models: ``modules_to_save`` trains separate embedding and
    head copies; the merge must keep both (for the tied model ms-swift unties the merged config)."""
    base = request.getfixturevalue(_FIXTURE[which])
    out = work / f"{which}_lora"
    _sft(base, sample_jsonl, out, work, tuner="lora", extra=_lora_args())
    adapter_cfg = json.loads((out / "checkpoint-2" / "adapter_config.json").read_text())
    assert set(adapter_cfg["modules_to_save"]) >= {"embed_tokens", "lm_head"}
    merged = work / f"{which}_lora_merged"
    run_swift("export", ["--adapters", str(out / "checkpoint-2"), "--merge_lora", "true", "--output_dir",
                         str(merged)], work)
    cfg = json.loads((merged / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    _check_merge(out / "checkpoint-2", merged, base, work, f"{which}_lora", infer_jsonl)


# ---------------------------------------------------------------- mixture of experts

def test_moe_lora_router_loss_lean_path_and_merge(tiny_model_moe_dir, sample_jsonl, infer_jsonl, work):
    """The MoE model through ``--model_type qwen3_vl_coord``: its own class, ms-swift's router loss
    (``--router_aux_loss_coef``), the lean loss path of group C, LoRA + ``modules_to_save``, and a merge that
    keeps the trained rows and the MoE architecture."""
    out = work / "moe_lora"
    proc = _sft(tiny_model_moe_dir, sample_jsonl, out, work, tuner="lora", loss_type="coordexp_hybrid",
                extra=_lora_args("--router_aux_loss_coef", "0.001", "--model_kwargs", '{"COORDEXP_LEAN": 1}'))
    assert "LM head untied" in proc.stdout
    logs = [r for r in read_jsonl(out / "logging.jsonl") if "loss" in r and "global_step/max_steps" in r]
    assert len(logs) == 2 and all(r["aux_loss"] > 0 for r in logs), logs  # the load-balancing loss is there
    assert all("coord_loss" in r for r in logs)
    assert json.loads((out / "coordexp_config.json").read_text())["flags"]["lean"] is True
    assert "coordexp lean path" in proc.stdout
    merged = work / "moe_lora_merged"
    run_swift("export", ["--adapters", str(out / "checkpoint-2"), "--merge_lora", "true", "--output_dir",
                         str(merged)], work)
    cfg = json.loads((merged / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3VLMoeForConditionalGeneration"] and cfg["model_type"] == "qwen3_vl_moe"
    _check_merge(out / "checkpoint-2", merged, tiny_model_moe_dir, work, "moe_lora", infer_jsonl)
