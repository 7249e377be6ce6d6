"""Run configurations, launch scripts and the comparison of runs."""
import json
import os
import subprocess

import pytest
import yaml

from helpers import REPO, base_sft_args, read_jsonl, run_swift, swift_env
from swift_coord_plugin.core.losses import PRESETS, LossConfig

GROUPS = {"a": ("coordexp_ce", "A"), "b": ("coordexp_geom", "B"), "c": ("coordexp_hybrid", "C")}


def _load(g):
    with open(REPO / "templates" / f"group_{g}.yaml") as f:
        return yaml.safe_load(f)


def _split(cfg):
    cfg = dict(cfg)
    env = dict(cfg.pop("ENV", {}))
    loss_env = {k: v for k, v in env.items() if k.startswith("COORDEXP_")}
    other_env = {k: v for k, v in env.items() if not k.startswith("COORDEXP_")}
    loss_type = cfg.pop("loss_type")
    output_dir = cfg.pop("output_dir")
    return cfg, other_env, loss_env, loss_type, output_dir


def test_group_configs_differ_only_in_loss():
    parts = {g: _split(_load(g)) for g in GROUPS}
    ref = parts["a"]
    for g, (cfg, other_env, loss_env, loss_type, output_dir) in parts.items():
        assert cfg == ref[0], f"group {g}: settings outside the loss differ"
        assert other_env == ref[1], f"group {g}: ENV outside COORDEXP_* differs"
        # The group is said once, by loss_type: the ENV blocks carry the same weights and no COORDEXP_USE_* switch.
        assert loss_env == ref[2], f"group {g}: COORDEXP_* keys differ between the group files"
        assert not any(k.startswith("COORDEXP_USE_") for k in loss_env), (g, sorted(loss_env))
        assert output_dir.endswith(f"group_{g}")
        assert loss_type == GROUPS[g][0]
        # The flags are the group's preset, and they validate.
        config, _ = LossConfig.from_env(GROUPS[g][1], {k: str(v) for k, v in loss_env.items()})
        for flag, value in PRESETS[GROUPS[g][1]].items():
            assert getattr(config, flag) == value, (g, flag)
    for key in ("model", "model_type", "template", "dataset", "val_dataset", "max_pixels", "learning_rate",
                "lr_scheduler_type", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
                "seed", "logging_steps", "eval_steps", "save_steps", "external_plugins"):
        assert key in ref[0], key
    assert ref[0]["model_type"] == "qwen3_vl_coord" and ref[0]["template"] == "qwen3_vl_coord"
    # resumable (optimizer state saved) and offline without extra flags
    assert ref[0]["save_only_model"] is False and ref[0]["check_model"] is False
    assert (REPO / ref[0]["external_plugins"]).is_file()


def test_current_objective_config_is_group_a_plus_switches():
    """templates/soft_ce_w1_gate.yaml: group A's run with soft CE, W1, the gate and the x1y1 order, nothing else."""
    from swift_coord_plugin.swift_ext.settings import check_settings

    with open(REPO / "templates" / "soft_ce_w1_gate.yaml") as f:
        cfg, other_env, loss_env, loss_type, output_dir = _split(yaml.safe_load(f))
    ref = _split(_load("a"))
    assert cfg == ref[0] and loss_type == ref[3] == "coordexp_ce"
    assert other_env.pop("COORD_ORDER") == "x1y1" and other_env == ref[1]
    env = {k: str(v) for k, v in {**loss_env, "COORD_ORDER": "x1y1"}.items()}
    check_settings(env, loss_type)
    config, _ = LossConfig.from_env("A", env)
    assert config.use_coord_ce and not config.use_coordexp_loss
    assert config.lambda_soft_ce > 0 and config.lambda_w1 > 0 and config.lambda_gate > 0
    assert {k for k in loss_env if loss_env[k] != ref[2].get(k)} == {
        "COORDEXP_LAMBDA_GATE", "COORDEXP_LAMBDA_SOFT_CE", "COORDEXP_SOFT_CE_SIGMA", "COORDEXP_LAMBDA_W1"}


def test_infer_config():
    with open(REPO / "templates" / "infer_eval.yaml") as f:
        cfg = yaml.safe_load(f)
    assert cfg["temperature"] == 0 and cfg["logprobs"] is True and cfg["top_logprobs"] >= 5
    assert cfg["max_new_tokens"] >= 30 * 10
    assert cfg["ENV"]["COORD_DECODING"] == "constrained"  # every group decoded under the answer grammar
    assert "max_pixels" not in cfg  # shell/eval.sh passes the run's own resolution


def _script(name, env, *args):
    return subprocess.run(["bash", str(REPO / "shell" / name), *args], env=swift_env(env), cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)


@pytest.mark.parametrize("env,msg", [
    ({"GROUP": "x"}, "GROUP must be a, b or c"),
    ({"GROUP": "a", "TUNER": "qlora"}, "TUNER must be full, lora or dora"),
    ({"GROUP": "a", "DATA": "/nonexistent.jsonl"}, "DATA not found"),
])
def test_train_script_fails_loudly(env, msg):
    path = os.path.dirname(os.sys.executable) + os.pathsep + os.environ.get("PATH", "")
    proc = _script("train.sh", {**env, "PATH": path})
    assert proc.returncode == 2 and msg in proc.stdout


def test_train_script_passes_settings_and_a_typo_stops_before_the_model_loads(tiny_model_dir, sample_jsonl,
                                                                              tmp_path):
    path = os.path.dirname(os.sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {"GROUP": "b", "MODEL": tiny_model_dir, "DATA": sample_jsonl, "OUT": str(tmp_path / "o"), "PATH": path,
           "COORDEXP_LEAN": "1", "COORD_ORDER": "x1y1", "COORDEXP_LAMBDA_SOFTCE": "1"}
    proc = subprocess.run(["bash", str(REPO / "shell" / "train.sh"), *CPU_ARGS, f"coord:{sample_jsonl}"],
                          env=swift_env(env), cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    out = proc.stdout
    assert "[train] COORDEXP_LEAN=1 from the shell" in out and "[train] COORD_ORDER=x1y1 from the shell" in out
    assert proc.returncode != 0 and "unknown loss setting(s) ['COORDEXP_LAMBDA_SOFTCE']" in out, out[-3000:]
    assert "--loss_type coordexp_geom" in out
    assert "[swift-coord] added" not in out and "[swift-coord] dataset" not in out  # nothing was loaded


def test_eval_script_needs_gt():
    proc = _script("eval.sh", {"GROUP": "a"})
    assert proc.returncode == 2 and "set GT" in proc.stdout


@pytest.mark.parametrize("env,msg", [({"DECODING": "greedy"}, "DECODING=greedy: expected free|constrained|coordexp"),
                                     ({"INFER_BACKEND": "pt"}, "INFER_BACKEND=pt: expected transformers|vllm")])
def test_eval_script_checks_decoding(env, msg):
    proc = _script("eval.sh", {"GROUP": "a", **env})
    assert proc.returncode == 2 and msg in proc.stdout


# ---------------------------------------------------------------------------------------------- e2e
CPU_ARGS = ["--torch_dtype", "float32", "--fp16", "false", "--bf16", "false", "--max_pixels", "65536",
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
            "--gradient_accumulation_steps", "1", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
            "--dataloader_num_workers", "0", "--dataset_num_proc", "1", "--gradient_checkpointing", "false",
            "--check_model", "false", "--report_to", "none", "--val_dataset"]


def _train(group, model, data, out, cwd, **env):
    path = os.path.dirname(os.sys.executable) + os.pathsep + os.environ.get("PATH", "")
    full_env = swift_env({"GROUP": group, "MODEL": model, "DATA": data, "OUT": str(out), "PATH": path,
                          "COORDEXP_LAMBDA_COORD": "7", **env})  # a shell value beats the YAML's ENV block
    proc = subprocess.run(["bash", str(REPO / "shell" / "train.sh"), *CPU_ARGS, f"coord:{data}"], env=full_env,
                          cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    (cwd / f"train_{group}.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


@pytest.mark.e2e
def test_launch_scripts_deepspeed_and_compare(tiny_model_dir, sample_jsonl, tmp_path):
    logs = {
        "a": _train("a", tiny_model_dir, sample_jsonl, tmp_path / "group_a", tmp_path, TUNER="dora"),
        "b": _train("b", tiny_model_dir, sample_jsonl, tmp_path / "group_b", tmp_path, DEEPSPEED="zero3",
                    MASTER_PORT="29701"),
    }  # group C and ZeRO-2 through train.sh are the same lines of the script (ZeRO-2 runs in test_gpu_acceptance.py)
    for g, out in logs.items():
        assert "[train] swift sft" in out and "[train] COORDEXP_LAMBDA_COORD=7 from the shell" in out
        cfg = json.load(open(tmp_path / f"group_{g}" / "coordexp_config.json"))
        assert cfg["flags"]["lambda_coord"] == 7.0  # the shell's, over the YAML's 1.0
        rows = read_jsonl(tmp_path / f"group_{g}" / "logging.jsonl")
        train = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eval_loss" in r]
        assert len(train) == 2 and evals
        for key in ("text_loss", "coord_ce_loss", "coord_loss", "coord_l1_loss", "coord_giou_loss", "coord_acc",
                    "coord_bin_err", "coord_mass"):
            assert key in train[0] and f"eval_{key}" in evals[0], (g, key)
    assert "--deepspeed zero3" in logs["b"] and "torch.distributed.run --nproc_per_node 1" in logs["b"]
    assert "--use_dora true --modules_to_save embed_tokens lm_head --lora_rank 64 --lora_alpha 128 --learning_rate 1e-4" in logs["a"]
    adapter = json.load(open(tmp_path / "group_a" / "checkpoint-2" / "adapter_config.json"))
    assert adapter["use_dora"] is True and set(adapter["modules_to_save"]) >= {"embed_tokens", "lm_head"}

    out = tmp_path / "compare"
    proc = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "coord-compare"),
                           str(tmp_path / "group_a"), str(tmp_path / "group_b"), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout
    summary = json.load(open(out / "summary.json"))
    assert [r["loss_type"] for r in summary["runs"]] == ["coordexp_ce", "coordexp_geom"]
    assert not summary["comparable"]  # the DeepSpeed stage differs between the runs
    assert any("`deepspeed` differs" in i for i in summary["comparability_issues"])
    assert any("`tuner_type` differs" in i for i in summary["comparability_issues"])
    assert any("`learning_rate` differs" in i for i in summary["comparability_issues"])  # DoRA: its LoRA rate
    assert not any("seed" in i for i in summary["comparability_issues"])
    for png in ("train_losses.png", "eval_losses.png"):
        assert (out / png).stat().st_size > 10000
    md = (out / "summary.md").read_text()
    assert "NOT COMPARABLE" in md and "coordexp_geom" in md and "use_geom_loss" in md


def test_comparability_of_runs_that_differ_in_loss_only(tmp_path):
    from swift_coord_plugin.experiment.compare import Run, comparability

    args = {"model": "m", "learning_rate": 1e-4, "seed": 42, "loss_type": "coordexp_ce", "output_dir": "x",
            "model_kwargs": {"COORDEXP_LAMBDA_COORD": 1, "MAX_PIXELS": 5}}
    other = dict(args, loss_type="coordexp_geom", output_dir="y", model_kwargs={"COORDEXP_LAMBDA_COORD": 2,
                                                                               "MAX_PIXELS": 5})
    mk = lambda n, a: Run(path=n, name=n, args=a, train=[{"_step": 10}])
    assert comparability([mk("A", args), mk("B", other)]) == []
    issues = comparability([mk("A", args), mk("B", dict(other, seed=1, model_kwargs={"MAX_PIXELS": 6}))])
    assert any("`seed` differs" in i for i in issues) and any("model_kwargs" in i for i in issues)
