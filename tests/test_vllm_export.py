"""coord-export-vllm: the vLLM-loadable copy of a transformers-5 MoE checkpoint (layout, config, errors), and that
the copy reloads in transformers with identical weights. The vLLM load itself: tests/test_vllm_e2e.py."""
import json
import os
import shutil

import pytest

from swift_coord_plugin import tiny_model
from swift_coord_plugin.cli import export_vllm as cli
from swift_coord_plugin.vllm_export import (DOWN, GATE_UP, ExportError, expert_layouts, export_for_vllm,
                                            vllm_export_needed)


def _tensors(folder):
    from safetensors import safe_open

    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.fixture(scope="module")
def exported(tiny_model_moe_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("moe_for_vllm") / "copy")
    return out, export_for_vllm(tiny_model_moe_dir, out)


def test_moe_copy_has_published_layout_and_norm_topk_prob(tiny_model_moe_dir, exported):
    out, report = exported
    text = json.load(open(os.path.join(tiny_model_moe_dir, "config.json")))["text_config"]
    assert "norm_topk_prob" not in text  # transformers 5 does not write it: the reason for the export
    E, H, I = text["num_local_experts"], text["hidden_size"], text["moe_intermediate_size"]
    src, dst = _tensors(tiny_model_moe_dir), _tensors(out)
    assert src.keys() == dst.keys()
    experts = [k for k in src if k.endswith((GATE_UP, DOWN))]
    assert len(experts) == 2 * text["num_hidden_layers"] and sorted(report.transposed) == sorted(experts)
    for key, t in src.items():
        if key.endswith(GATE_UP):
            assert t.shape == (E, 2 * I, H) and dst[key].shape == (E, H, 2 * I), key
            assert dst[key].equal(t.permute(0, 2, 1)), key
        elif key.endswith(DOWN):
            assert t.shape == (E, H, I) and dst[key].shape == (E, I, H), key
            assert dst[key].equal(t.permute(0, 2, 1)), key
        else:
            assert dst[key].equal(t), key
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["text_config"]["norm_topk_prob"] is True
    assert config["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(tiny_model_moe_dir, name)):
            assert open(os.path.join(out, name), "rb").read() == open(os.path.join(tiny_model_moe_dir, name),
                                                                        "rb").read(), name


def test_moe_copy_reloads_in_transformers_with_identical_weights(tiny_model_moe_dir, exported):
    import torch
    from transformers import Qwen3VLMoeForConditionalGeneration

    a = Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny_model_moe_dir).state_dict()
    b = Qwen3VLMoeForConditionalGeneration.from_pretrained(exported[0]).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_export_of_the_copy_keeps_it(exported, tmp_path):
    out, _ = exported
    report = export_for_vllm(out, str(tmp_path / "again"))
    assert report.transposed == [] and len(report.already_published) > 0
    a, b = _tensors(out), _tensors(tmp_path / "again")
    assert all(a[k].equal(b[k]) for k in a)


def test_tiny_moe_experts_are_not_square():
    # Square fused matrices would make the two layouts indistinguishable to transformers' loader.
    text = tiny_model.tiny_config(moe=True).text_config
    expert_layouts(text.hidden_size, text.moe_intermediate_size, text.num_experts)


def _fake_moe_ckpt(folder, hidden, intermediate, shape=None, extra_files=()):
    import torch
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    config = {"model_type": "qwen3_vl_moe", "architectures": ["Qwen3VLMoeForConditionalGeneration"],
              "text_config": {"hidden_size": hidden, "moe_intermediate_size": intermediate, "num_local_experts": 2}}
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    key = "model.language_model.layers.0." + GATE_UP
    save_file({key: torch.zeros(shape or (2, 2 * intermediate, hidden)),
               "model.language_model.layers.0." + DOWN: torch.zeros(2, hidden, intermediate)},
              os.path.join(folder, "model.safetensors"))
    for name in extra_files:
        if name.endswith("/"):
            os.makedirs(os.path.join(folder, name), exist_ok=True)
        else:
            open(os.path.join(folder, name), "w").write("x")
    return key


@pytest.mark.parametrize("hidden,intermediate,which", [(8, 4, "gate_up_proj"), (8, 8, "down_proj")])
def test_square_experts_refused(tmp_path, hidden, intermediate, which):
    _fake_moe_ckpt(tmp_path / "ckpt", hidden, intermediate)
    with pytest.raises(ExportError, match=f"{which}.*square.*hidden_size {hidden}"):
        export_for_vllm(str(tmp_path / "ckpt"), str(tmp_path / "out"))


def test_expert_shape_matching_neither_layout_names_file_and_key(tmp_path):
    key = _fake_moe_ckpt(tmp_path / "ckpt", 8, 6, shape=(2, 5, 8))
    with pytest.raises(ExportError, match=rf"model\.safetensors: {key} has shape \[2, 5, 8\]"):
        export_for_vllm(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # no half-written copy


def test_training_state_left_out_and_others_copied(tmp_path):
    _fake_moe_ckpt(tmp_path / "ckpt", 8, 6, extra_files=("optimizer.pt", "rng_state.pth", "args.json",
                                                          "global_step3/"))
    report = export_for_vllm(str(tmp_path / "ckpt"), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["args.json", "config.json", "model.safetensors"]
    assert sorted(report.left_out) == ["global_step3", "optimizer.pt", "rng_state.pth"]


def test_dense_checkpoint_copied_unchanged(tmp_path):
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "dense"
    src.mkdir()
    json.dump({"model_type": "qwen3_vl", "text_config": {"hidden_size": 8}}, open(src / "config.json", "w"))
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(src / "model.safetensors"))
    report = export_for_vllm(str(src), str(tmp_path / "out"))
    assert not report.moe and sorted(report.copied) == ["config.json", "model.safetensors"]
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()


def test_bad_inputs(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ExportError, match="LoRA adapter.*merge"):
        export_for_vllm(str(tmp_path / "adapter"), str(tmp_path / "o1"))
    _fake_moe_ckpt(tmp_path / "ckpt", 8, 6)
    with pytest.raises(ExportError, match="must differ"):
        export_for_vllm(str(tmp_path / "ckpt"), str(tmp_path / "ckpt"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ExportError, match="not empty"):
        export_for_vllm(str(tmp_path / "ckpt"), str(tmp_path / "full"))
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"error: .*config\.json: not valid JSON"):
        cli.main([str(tmp_path / "ckpt"), str(tmp_path / "o2")])
    shutil.rmtree(tmp_path / "ckpt")
    _fake_moe_ckpt(tmp_path / "ckpt", 8, 6)
    cli.main([str(tmp_path / "ckpt"), str(tmp_path / "o3")])
    assert "transposed 2 fused expert weights" in capsys.readouterr().out


def test_check_says_which_checkpoints_need_the_copy(tiny_model_moe_dir, tiny_model_dir, exported, tmp_path):
    assert "norm_topk_prob missing" in vllm_export_needed(tiny_model_moe_dir)
    assert vllm_export_needed(exported[0]) is None
    assert vllm_export_needed(tiny_model_dir) is None  # dense: vLLM loads it as saved
    # norm_topk_prob alone does not make a checkpoint loadable: the expert layout is checked too.
    half = tmp_path / "half"
    _fake_moe_ckpt(half, 8, 6)
    config = json.load(open(half / "config.json"))
    config["text_config"]["norm_topk_prob"] = True
    json.dump(config, open(half / "config.json", "w"))
    assert "experts.down_proj in transformers' layout" in vllm_export_needed(str(half))
    with pytest.raises(SystemExit) as e:
        cli.main(["--check", str(half)])
    assert e.value.code == 1


def test_eval_script_stops_on_moe_checkpoint_for_vllm(tiny_model_moe_dir, tmp_path):
    import subprocess
    import sys

    from helpers import REPO, swift_env

    env = swift_env({"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(REPO),
                     "CKPT": tiny_model_moe_dir, "OUT": str(tmp_path / "out"), "INFER_BACKEND": "vllm",
                     "GT": str(REPO / "assets" / "coco_sample" / "instances.json")})
    proc = subprocess.run(["bash", str(REPO / "shell" / "eval.sh")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert f"coord-export-vllm {tiny_model_moe_dir} OUT" in proc.stdout and "set CKPT to that copy" in proc.stdout
