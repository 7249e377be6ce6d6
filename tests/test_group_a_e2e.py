"""The real ms-swift CLI on the tiny model: a bad sample stops ``swift sft`` naming its line; stock ms-swift (no
plugin) trains the tiny model.

Group A's full fine-tuning (log, checkpoint layout, reload, ``swift infer``) and LoRA with ``modules_to_save``
(dense tied and untied, MoE: the adapter's trained rows, ``--adapters`` inference, the merge) are in
test_vocab_paths_e2e.py."""
import json

import pytest

from helpers import base_sft_args, read_jsonl, run_swift

pytestmark = pytest.mark.e2e


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
