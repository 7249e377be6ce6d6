"""The registered loss types under the real ms-swift: in process against the stock loss, and through the
``swift sft`` CLI on the tiny model (logged components, equality with stock CE, gradient-accumulation and
world-size invariance, refused configurations).

The invariance runs take one plain-SGD step (lr 1, no clipping, no decay) from the same initial weights, so
the weight update is the gradient: equal updates mean equal gradients.
"""
import glob
import json
import os
from types import SimpleNamespace

import pytest
import torch

from helpers import (SGD_ONE_STEP, assert_same_update, base_sft_args, base_weights, checkpoint_weights, read_jsonl,
                     rows_digests, run_swift, train_logs)
from swift_coord_plugin.core import codec
from swift_coord_plugin.core.losses import LossConfig, logged_metric_names
from swift_coord_plugin.core.vocab import CoordVocab
from swift_coord_plugin.swift_ext import loss as coord_loss

TRAIN_KEYS = list(logged_metric_names(LossConfig.preset("C")))  # what every group logs


# ---------------------------------------------------------------------------------------------- helpers
def _sft(model_dir, data, out, loss_type, *, steps=1, batch_size=4, ga=1, extra=(), launcher_env=None, check=True):
    args = base_sft_args(model_dir, data, str(out), steps=steps, batch_size=batch_size, loss_type=loss_type,
                         extra=["--gradient_accumulation_steps", str(ga), *extra])
    return run_swift("sft", args, os.path.dirname(str(out)), launcher_env=launcher_env, check=check)


# ---------------------------------------------------------------------------------------------- in process
def test_group_a_equals_stock_cross_entropy_in_process(tiny_model_dir):
    """Value and gradient of ``coordexp_ce`` equal ms-swift's ``cross_entropy`` bit for bit, real token ids."""
    from swift.loss import loss_map
    from transformers import AutoTokenizer

    coord_loss.register()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(codec.new_tokens(), special_tokens=True)  # what the model type does when loading
    vocab = CoordVocab.from_tokenizer(tok)
    c = vocab.coord_start
    obj = [vocab.obj_start, 11, c + 10, c + 200, c + 300, c + 999, 220, vocab.obj_end]
    labels = torch.tensor([[-100] * 5 + obj + obj + [151645, -100],
                           [-100] * 3 + obj + obj[:5] + [-100] * 7])
    stock = loss_map["cross_entropy"](None, None)
    mine = loss_map["coordexp_ce"](None, None)
    mine.vocab = vocab
    assert mine.config == LossConfig.preset("A")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(*labels.shape, 152704, generator=g)
    for n_items, scale in ((None, None), (torch.tensor(40), None), (torch.tensor(40), torch.rand(labels.numel()))):
        grads = []
        values = []
        for fn in (stock, mine):
            logits = base.clone().requires_grad_(True)
            v = fn(SimpleNamespace(logits=logits), labels, num_items_in_batch=n_items, loss_scale=scale)
            v.backward()
            values.append(v.detach())
            grads.append(logits.grad)
        assert torch.equal(values[0], values[1])
        assert torch.equal(grads[0], grads[1])


def test_register_is_idempotent():
    from swift.loss import loss_map

    coord_loss.register()
    coord_loss.register()
    assert loss_map["coordexp_ce"] is coord_loss.CoordExpCELoss
    assert loss_map["coordexp_geom"].group == "B" and loss_map["coordexp_hybrid"].group == "C"


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def group_c_reference(tiny_model_dir, four_samples, tmp_path_factory):
    """Group C, one micro-batch of 4, full logits (no logits_to_keep), one SGD step."""
    out = tmp_path_factory.mktemp("c_ref") / "out"
    _sft(tiny_model_dir, four_samples, out, "coordexp_hybrid", batch_size=4,
         extra=SGD_ONE_STEP + ["--use_logits_to_keep", "false"])
    return str(out)


@pytest.mark.e2e
def test_cli_group_a_equals_stock_and_logs_components(tiny_model_dir, four_samples, tmp_path):
    a, stock = tmp_path / "a", tmp_path / "stock"
    _sft(tiny_model_dir, four_samples, a, "coordexp_ce", extra=SGD_ONE_STEP)
    _sft(tiny_model_dir, four_samples, stock, "cross_entropy", extra=SGD_ONE_STEP)
    wa, ws = checkpoint_weights(str(a)), checkpoint_weights(str(stock))
    assert wa.keys() == ws.keys() and all(torch.equal(wa[k], ws[k]) for k in wa)
    la, ls = train_logs(str(a))[0], train_logs(str(stock))[0]
    assert la["loss"] == ls["loss"] and la["grad_norm"] == ls["grad_norm"]
    assert set(TRAIN_KEYS) <= set(la) and "gate_loss" not in la
    # Group A: total = token-weighted mean of text and coordinate CE (all 4 samples hold complete boxes).
    assert la["coord_loss"] > 0 and la["incomplete_objects"] == 0
    assert min(la["text_loss"], la["coord_ce_loss"]) <= la["loss"] <= max(la["text_loss"], la["coord_ce_loss"])
    cfg = json.load(open(os.path.join(str(a), coord_loss.CONFIG_FILE)))
    assert cfg["loss_type"] == "coordexp_ce" and cfg["flags"] == LossConfig.preset("A").to_dict()


@pytest.mark.e2e
def test_cli_group_b_train_and_eval_components_env_override(tiny_model_dir, four_samples, tmp_path):
    out = tmp_path / "b"
    proc = _sft(tiny_model_dir, four_samples, out, "coordexp_geom", steps=2, batch_size=2,
                extra=["--val_dataset", f"coord:{four_samples}", "--eval_strategy", "steps", "--eval_steps", "2",
                       "--per_device_eval_batch_size", "2", "--report_to", "tensorboard",
                       "--model_kwargs", json.dumps({"COORDEXP_LAMBDA_GATE": 0.5, "COORDEXP_BETA_GIOU": 2})])
    assert proc.stdout.count("coordexp loss configuration") == 1
    out = str(out)
    cfg = json.load(open(os.path.join(out, coord_loss.CONFIG_FILE)))
    assert cfg["flags"]["lambda_gate"] == 0.5 and cfg["flags"]["beta_giou"] == 2.0
    assert cfg["flags"]["use_coord_ce"] is False and cfg["flags"]["use_geom_loss"] is True
    assert set(cfg["overrides"]) == {"COORDEXP_LAMBDA_GATE", "COORDEXP_BETA_GIOU"}
    rows = read_jsonl(os.path.join(out, "logging.jsonl"))
    train = [r for r in rows if "loss" in r]
    assert len(train) == 2
    logged = logged_metric_names(LossConfig.from_env("B", {"COORDEXP_LAMBDA_GATE": "0.5"})[0])
    assert "gate_loss" in logged
    for r in train:
        assert set(logged) <= set(r)
        assert abs(r["coord_loss"] - (r["coord_l1_loss"] + 2.0 * r["coord_giou_loss"])) < 1e-4 * r["coord_loss"]
    ev = [r for r in rows if "eval_loss" in r]
    assert len(ev) == 1 and {f"eval_{m}" for m in logged} <= set(ev[0])
    # The common yardsticks (core.yardsticks), train and eval, and the environment-only settings of the run.
    from swift_coord_plugin.core.yardsticks import YARDSTICK_NAMES

    assert set(YARDSTICK_NAMES) <= set(train[0]) and {f"eval_{m}" for m in YARDSTICK_NAMES} <= set(ev[0])
    assert all(0 <= ev[0][f"eval_{m}"] <= 1 for m in YARDSTICK_NAMES)
    assert json.load(open(os.path.join(out, "coord_env.json")))["env"]["COORDEXP_LAMBDA_GATE"] == "0.5"
    # Tensorboard gets the same scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(os.path.join(out, "runs", "**", "events.out.tfevents.*"), recursive=True)
    assert events
    tags = set()
    for e in events:
        acc = EventAccumulator(e)
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/coord_loss", "train/text_loss", "train/gate_loss", "eval/coord_loss", "eval/coord_mass"} <= tags


@pytest.mark.e2e
def test_cli_group_c_gradient_accumulation_invariance(tiny_model_dir, four_samples, tmp_path, group_c_reference):
    """1 micro-batch of 4 (full logits) == 4 accumulated micro-batches of 1 (logits trimmed per token)."""
    ga = tmp_path / "ga"
    _sft(tiny_model_dir, four_samples, ga, "coordexp_hybrid", batch_size=1, ga=4, extra=SGD_ONE_STEP)
    assert_same_update(checkpoint_weights(group_c_reference), checkpoint_weights(str(ga)), base_weights(tiny_model_dir))
    ref_log, ga_log = train_logs(group_c_reference)[0], train_logs(str(ga))[0]
    assert set(TRAIN_KEYS) <= set(ref_log)
    for k in ("loss", "text_loss", "coord_ce_loss", "coord_loss", "coord_mass"):
        assert abs(ref_log[k] - ga_log[k]) <= 1e-4 * abs(ref_log[k]), k


@pytest.mark.e2e
def test_cli_group_c_two_ranks_equal_one_process(tiny_model_dir, four_samples, tmp_path, group_c_reference):
    """2 CPU ranks x 2 samples (logits trimmed to a suffix) == 1 process x 4 samples."""
    ddp = tmp_path / "ddp"
    proc = _sft(tiny_model_dir, four_samples, ddp, "coordexp_hybrid", batch_size=2,
                extra=SGD_ONE_STEP + ["--use_cpu", "true"], launcher_env={"NPROC_PER_NODE": "2"})
    # Both ranks start from the new rows of a plain one-process load, bit for bit (the digest of the rows each
    # rank holds after the plugin's initialisation, swift_ext.model.rows_digest).
    from swift.model import get_model_processor

    from swift_coord_plugin.swift_ext.model import rows_digest
    from swift_coord_plugin.swift_ext.register import register

    register()
    plain, processor = get_model_processor(tiny_model_dir, model_type="qwen3_vl_coord", torch_dtype=torch.float32,
                                           download_model=False)
    emb = plain.get_input_embeddings().weight
    want = rows_digest([emb], CoordVocab.from_tokenizer(processor.tokenizer).coord_start, emb.shape[0])
    assert rows_digests(proc.stdout) == [want, want], proc.stdout[-3000:]
    assert_same_update(checkpoint_weights(group_c_reference), checkpoint_weights(str(ddp)), base_weights(tiny_model_dir))
    ref_log, ddp_log = train_logs(group_c_reference)[0], train_logs(str(ddp))[0]
    # Components are reduced over the ranks before logging.
    for k in ("loss", "text_loss", "coord_ce_loss", "coord_loss", "coord_bin_err"):
        assert abs(ref_log[k] - ddp_log[k]) <= 1e-4 * abs(ref_log[k]), k


@pytest.mark.e2e
def test_cli_switches_lean_path_and_random_order(tiny_model_dir, four_samples, tmp_path):
    """Every switch at once through swift sft (the lean path, two epochs of the random order, coordinate input
    noise): the flags reach coordexp_config.json, the switches' components are logged, each epoch draws its own
    orders, the input noise is on."""
    out = tmp_path / "sw"
    switches = {"COORDEXP_LAMBDA_SOFT_CE": 0.5, "COORDEXP_SOFT_CE_SIGMA": 3, "COORDEXP_LAMBDA_W1": 2,
                "COORDEXP_LAMBDA_BOX_ORDER": 1, "COORDEXP_BOX_LOSS": "ciou", "COORDEXP_LEAN": True}
    proc = _sft(tiny_model_dir, four_samples, out, "coordexp_hybrid", steps=4, batch_size=2,
                extra=["--model_kwargs", json.dumps({**switches, "COORD_ORDER": "random", "COORD_ORDER_SEED": 5,
                                                     "COORD_INPUT_NOISE_BINS": 4})])
    assert "drawing the object orders of epoch 1" in proc.stdout
    assert "coordinate input noise: in training, each input coordinate token moved by up to 4 bins" in proc.stdout
    cfg = json.load(open(os.path.join(str(out), coord_loss.CONFIG_FILE)))
    assert cfg["object_order"] == {"policy": "random", "seed": 5}
    f = cfg["flags"]
    assert (f["lambda_soft_ce"], f["soft_ce_sigma"], f["lambda_w1"], f["lambda_box_order"], f["box_loss"],
            f["lean"]) == (0.5, 3.0, 2.0, 1.0, "ciou", True)
    train = train_logs(str(out))
    assert len(train) == 4
    for r in train:
        assert {"coord_box_loss", "coord_soft_ce_loss", "coord_w1_loss", "coord_box_order_loss"} <= set(r)
        assert abs(r["coord_loss"] - (r["coord_l1_loss"] + r["coord_box_loss"])) < 1e-4 * r["coord_loss"]


@pytest.mark.e2e
def test_cli_refused_configurations_stop_before_the_model_loads(tiny_model_dir, four_samples, tmp_path):
    out = tmp_path / "bad"
    proc = _sft(tiny_model_dir, four_samples, out, "coordexp_geom", check=False,
                extra=["--model_kwargs", json.dumps({"COORDEXP_USE_COORDEXP_LOSS": False})])
    assert proc.returncode != 0
    assert "SettingsError" in proc.stdout and "use_geom_loss=true needs use_coordexp_loss=true" in proc.stdout
    assert "check_at_plugin_import" in proc.stdout  # raised while ms-swift imports the plugin ...
    assert "[swift-coord] added" not in proc.stdout  # ... before the model is loaded
    assert not os.path.exists(os.path.join(str(out), "logging.jsonl")) or not train_logs(str(out))
    # The ms-swift options this loss would replace (--sequence_parallel_size among them) stop a launch the same
    # way: test_settings.py.
