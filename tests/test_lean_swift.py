"""The lean loss path (``COORDEXP_LEAN=1``) through the real ``swift sft`` CLI on the tiny model: one plain-SGD
step per group gives the standard path's logged loss and the same weight update (so the same gradient); under
DeepSpeed ZeRO-3 the partitioned head is gathered; LoRA with ``modules_to_save`` on 2 DDP ranks (whose
unused-parameter search starts from the model's outputs); and the options that need logits are refused.
"""
import json
import os

import pytest

from helpers import (SGD_ONE_STEP, assert_same_update, base_sft_args, base_weights, checkpoint_weights, run_swift,
                     train_logs)
from swift_coord_plugin.core.losses import LOSS_TYPES

# A: 4 accumulated micro-batches of 1 (logits_to_keep = a mask of the labelled positions); B, C: one
# micro-batch of 4 (logits_to_keep = a suffix).
BATCHING = {"A": (1, 4), "B": (4, 1), "C": (4, 1)}


def _sft(model_dir, data, out, group, *, lean, extra=(), env=None, launcher_env=None, check=True):
    batch, ga = BATCHING[group]
    args = base_sft_args(model_dir, data, str(out), steps=1, batch_size=batch, loss_type=LOSS_TYPES[group],
                         extra=["--gradient_accumulation_steps", str(ga), *SGD_ONE_STEP, *extra])
    env = dict(env or {})
    if lean:
        env["COORDEXP_LEAN"] = "1"
    return run_swift("sft", args, os.path.dirname(str(out)), env=env, launcher_env=launcher_env, check=check)


@pytest.fixture(scope="module")
def standard_runs(tiny_model_dir, four_samples, tmp_path_factory):
    """The standard-path run of each group, made on first use."""
    runs = {}

    def get(group):
        if group not in runs:
            out = tmp_path_factory.mktemp(f"std_{group}") / "out"
            _sft(tiny_model_dir, four_samples, out, group, lean=False)
            runs[group] = str(out)
        return runs[group]

    return get


def _assert_same_step(std_out, lean_out, model_dir):
    ref, lean = train_logs(std_out)[0], train_logs(lean_out)[0]
    for k in ("loss", "grad_norm", "text_loss", "coord_ce_loss", "coord_loss", "coord_mass", "token_acc"):
        assert abs(ref[k] - lean[k]) <= 1e-5 * abs(ref[k]) + 1e-7, (k, ref[k], lean[k])
    assert_same_update(checkpoint_weights(std_out), checkpoint_weights(lean_out), base_weights(model_dir))


@pytest.mark.e2e
@pytest.mark.parametrize("group", "ABC")
def test_cli_lean_matches_standard(group, tiny_model_dir, four_samples, standard_runs, tmp_path):
    out = tmp_path / "lean"
    if group == "B":  # the switch through --model_kwargs, as a run configuration would set it
        proc = _sft(tiny_model_dir, four_samples, out, group, lean=False,
                    extra=["--model_kwargs", json.dumps({"COORDEXP_LEAN": True})])
    else:
        proc = _sft(tiny_model_dir, four_samples, out, group, lean=True)
    assert "coordexp lean path: loss from the hidden states" in proc.stdout
    cfg = json.load(open(out / "coordexp_config.json"))
    assert cfg["flags"]["lean"] is True and "COORDEXP_LEAN" in cfg["overrides"]
    _assert_same_step(standard_runs(group), str(out), tiny_model_dir)


@pytest.mark.e2e
def test_cli_lean_zero3_gathers_the_partitioned_head(tiny_model_dir, four_samples, standard_runs, tmp_path):
    out = tmp_path / "z3"
    proc = _sft(tiny_model_dir, four_samples, out, "C", lean=True, extra=["--deepspeed", "zero3"],
                launcher_env={"NPROC_PER_NODE": "1", "MASTER_PORT": "29741"})
    assert "a DeepSpeed ZeRO-3 parameter gathered for the call" in proc.stdout
    _assert_same_step(standard_runs("C"), str(out), tiny_model_dir)


@pytest.mark.e2e
def test_cli_lean_lora_modules_to_save_two_ranks(tiny_model_dir, four_samples, tmp_path):
    from safetensors.torch import load_file

    extra = ["--tuner_type", "lora", "--lora_dropout", "0", "--modules_to_save", "embed_tokens", "lm_head",
             "--use_cpu", "true", "--per_device_train_batch_size", "2"]
    adapters = {}
    for lean in (False, True):
        out = tmp_path / ("lean" if lean else "std")
        _sft(tiny_model_dir, four_samples, out, "B", lean=lean, extra=extra,
             launcher_env={"NPROC_PER_NODE": "2", "MASTER_PORT": "29742"})
        adapters[lean] = load_file(os.path.join(out, "checkpoint-1", "adapter_model.safetensors"))
    std, lean = adapters[False], adapters[True]
    assert std.keys() == lean.keys() and any("lm_head" in k for k in std)
    for k in std:
        diff = (std[k] - lean[k]).abs().max().item()
        assert diff <= 1e-5 * std[k].abs().max().item() + 1e-8, (k, diff)


@pytest.mark.e2e
def test_cli_lean_refuses_a_non_binary_loss_scale(tiny_model_dir, four_samples, tmp_path):
    out = tmp_path / "refused"
    proc = _sft(tiny_model_dir, four_samples, out, "C", lean=True, extra=["--loss_scale", "react"], check=False)
    assert proc.returncode != 0
    assert "LeanPathError" in proc.stdout and "loss_scale='react' (not binary)" in proc.stdout
    assert "run without COORDEXP_LEAN" in proc.stdout
