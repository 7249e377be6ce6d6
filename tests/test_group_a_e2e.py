"""Group A end to end through the real ms-swift CLI on the tiny model: sft -> checkpoint -> infer -> parse.

LoRA with ``modules_to_save`` (dense tied and untied, MoE: the adapter's trained rows, ``--adapters`` inference, the
merge) is in test_vocab_paths_e2e.py."""
import json
import os

import pytest

from helpers import base_infer_args, base_sft_args, last_checkpoint, read_jsonl, run_swift
from swift_coord_plugin.core import codec

pytestmark = pytest.mark.e2e


def _check_checkpoint(ckpt):
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


def _infer_and_parse(ckpt, sample_jsonl, cwd):
    result = str(cwd / "infer.jsonl")
    # Only the checkpoint: plugin, model type and template come back from its args.json.
    args = base_infer_args(ckpt, sample_jsonl, result, max_new_tokens=24)
    run_swift("infer", args, cwd)
    rows = read_jsonl(result)
    assert len(rows) == len(read_jsonl(sample_jsonl))
    for r in rows:
        res = codec.parse_objects(r["response"])  # never raises; a random model writes junk
        assert isinstance(res.objects, list)
        assert r["chat_template_kwargs"]["coord_meta"]["image_id"] > 0
    return rows


def test_full_finetune_group_a(tiny_model_dir, sample_jsonl, tmp_path):
    out = str(tmp_path / "out")
    proc = run_swift("sft", base_sft_args(tiny_model_dir, sample_jsonl, out, steps=3), tmp_path)
    assert "[swift-coord] added 1002 tokens" in proc.stdout
    assert "[swift-coord] dataset" in proc.stdout and "9 kept" in proc.stdout
    logs = read_jsonl(os.path.join(out, "logging.jsonl"))
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 3 and all(l == l and l > 0 for l in losses)
    ckpt = last_checkpoint(out)
    _check_checkpoint(ckpt)
    _infer_and_parse(ckpt, sample_jsonl, tmp_path)


def test_bad_sample_stops_sft_with_its_line(tiny_model_dir, sample_jsonl, tmp_path):
    rows = read_jsonl(sample_jsonl)[:2] + [{"image": str(tmp_path / "missing.jpg"), "objects": []}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_swift("sft", base_sft_args(tiny_model_dir, str(bad), str(tmp_path / "o"), steps=1), tmp_path,
                     check=False)
    assert proc.returncode != 0
    assert "bad.jsonl:3: image file not found" in proc.stdout


def test_stock_swift_accepts_the_tiny_model(tiny_model_dir, sample_jsonl, tmp_path):
    """Without the plugin: stock `--model_type qwen3_vl` and its template train on the tiny model."""
    s = read_jsonl(sample_jsonl)[0]
    rows = [{"messages": [{"role": "user", "content": "<image>What is this?"},
                          {"role": "assistant", "content": "A kitchen."}], "images": [s["image"]]}] * 4
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "stock"
    run_swift("sft", ["--model", tiny_model_dir, "--model_type", "qwen3_vl", "--dataset", str(data),
                      "--tuner_type", "full", "--torch_dtype", "float32", "--fp16", "false", "--bf16", "false",
                      "--check_model", "false", "--max_steps", "1", "--per_device_train_batch_size", "2",
                      "--output_dir", str(out), "--add_version", "false", "--save_only_model", "true",
                      "--dataloader_num_workers", "0", "--report_to", "none", "--max_pixels", "65536"], tmp_path)
    logs = read_jsonl(out / "logging.jsonl")
    assert any("loss" in r for r in logs)
