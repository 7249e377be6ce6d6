"""The lean loss path (``COORDEXP_LEAN=1``): the loss from the hidden states and the LM head equals the
standard path's loss on the logits ``hidden @ head.T``, in value and in the gradients of the hidden states
and of the head; and the ms-swift glue in process on the real tiny Qwen3-VL (tied and untied heads, LoRA with
``modules_to_save``, ``logits_to_keep``) and its refusals.

"Relative" gradient error is ``||g_lean - g_std|| / ||g_std||`` over the whole tensor.
"""
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import CS, I, K, V, VOCAB, build_row, two_rows
from swift_coord_plugin.core.lean import default_chunk_rows, linear_ce_and_coord_logits
from swift_coord_plugin.core.losses import LossConfig, LossConfigError, compute_loss, compute_loss_from_hidden

H = 24


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-300)).item()


def make_inputs(labels, dtype, seed=0, boxes=()):
    """Hidden states and a head whose coordinate rows give valid boxes at the box positions (x2 > x1)."""
    g = torch.Generator().manual_seed(seed)
    B, T = labels.shape
    h = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64) / H ** 0.5
    # Direction 0 of the hidden state pushes the coordinate logits up a ramp, direction 1 down.
    ramp = torch.linspace(-3.0, 3.0, K, dtype=torch.float64)
    w[CS:CS + K, 0] += ramp
    w[CS:CS + K, 1] -= ramp
    for b, pos in boxes:
        for j, t in enumerate(pos):
            h[b, t, 0 if j >= 2 else 1] += 2.0
    return h.to(dtype), w.to(dtype)


def both_paths(h0, w0, labels, cfg, **kw):
    """(standard LossOutput, lean LossOutput, standard grads, lean grads) from the same inputs."""
    n_items = kw.pop("num_items_in_batch", None)
    scale = kw.pop("loss_scale", None)
    h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    std = compute_loss(h @ w.t(), labels, VOCAB, cfg, num_items_in_batch=n_items, loss_scale=scale)
    g_std = torch.autograd.grad(std.loss, (h, w))
    h2, w2 = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    lean = compute_loss_from_hidden(h2, w2, labels, VOCAB, cfg, num_items_in_batch=n_items, loss_scale=scale, **kw)
    g_lean = torch.autograd.grad(lean.loss, (h2, w2))
    return std, lean, g_std, g_lean


# ---------------------------------------------------------------------------------------------- config
def test_lean_is_a_config_field_read_from_the_environment():
    cfg, used = LossConfig.from_env("B", {"COORDEXP_LEAN": "1"})
    assert cfg.lean is True and used == {"COORDEXP_LEAN": "1"}
    assert LossConfig.preset("C").lean is False
    with pytest.raises(LossConfigError, match="COORDEXP_LEAN"):
        LossConfig.from_env("A", {"COORDEXP_LEAN": "sometimes"})


# ---------------------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("group, overrides", [
    ("A", {}), ("B", {}), ("C", {}),
    ("C", dict(lambda_gate=0.4, lambda_coord=0.3, lambda_coord_ce=2.0)),
    ("B", dict(lambda_gate=0.7, use_geom_loss=False)),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lean_equals_standard(group, overrides, dtype):
    cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), **overrides})
    labels, boxes = two_rows()
    h0, w0 = make_inputs(labels, dtype, boxes=[(b, p) for b, p, _ in boxes])
    scale = torch.rand(labels.numel(), generator=torch.Generator().manual_seed(1)) + 0.5
    for chunk in (1, 5, 1000):  # one row per chunk, several chunks, everything in one chunk
        std, lean, g_std, g_lean = both_paths(h0, w0, labels, cfg, num_items_in_batch=torch.tensor(57),
                                              loss_scale=scale, chunk_rows=chunk)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert abs(lean.loss.item() - std.loss.item()) <= tol * abs(std.loss.item())
        assert rel(g_lean[0], g_std[0]) <= tol and rel(g_lean[1], g_std[1]) <= tol
        torch.testing.assert_close(lean.metric_sums, std.metric_sums, rtol=tol * 10, atol=1e-9)
        assert torch.equal(lean.metric_counts, std.metric_counts)
        assert lean.terms.keys() == std.terms.keys()
        for k in std.terms:
            torch.testing.assert_close(lean.terms[k], std.terms[k], rtol=tol * 10, atol=1e-12)
        torch.testing.assert_close(sum(lean.terms.values()), lean.loss.detach(), rtol=tol * 10, atol=1e-12)


def test_lean_equals_standard_in_bfloat16():
    """bf16 hidden states and head (as under DeepSpeed bf16): loss within 1e-3, gradients within 1e-2, with
    many chunks (each one rounds the accumulated head gradient to bf16 once)."""
    labels = torch.tensor([build_row([[100, 200, 600, 700], [10, 20, 30, 40], [400, 410, 500, 990]] * 6,
                                     prompt=5, total=200)[0] for _ in range(3)])
    h0, w0 = make_inputs(labels, torch.bfloat16, seed=2)
    for group in "ABC":
        std, lean, g_std, g_lean = both_paths(h0, w0, labels, LossConfig.preset(group), chunk_rows=16)
        assert lean.loss.dtype == torch.float32
        assert abs(lean.loss.item() - std.loss.item()) <= 1e-3 * abs(std.loss.item())
        assert g_lean[0].dtype == g_lean[1].dtype == torch.bfloat16
        assert rel(g_lean[0], g_std[0]) <= 1e-2 and rel(g_lean[1], g_std[1]) <= 1e-2


def test_autocast_dtype_matmul_with_float32_weights():
    """``mm_dtype``: the head matmul in bf16 on float32 hidden states and weight, as under autocast; equals the
    standard path on the autocast logits, and the weight gradient stays float32."""
    labels, _ = two_rows()
    h0, w0 = make_inputs(labels, torch.float32, seed=3)
    cfg = LossConfig.preset("C")
    h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    std = compute_loss(h.bfloat16() @ w.bfloat16().t(), labels, VOCAB, cfg)
    g_std = torch.autograd.grad(std.loss, (h, w))
    h2, w2 = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    lean = compute_loss_from_hidden(h2, w2, labels, VOCAB, cfg, mm_dtype=torch.bfloat16, chunk_rows=7)
    g_lean = torch.autograd.grad(lean.loss, (h2, w2))
    assert abs(lean.loss.item() - std.loss.item()) <= 1e-3 * std.loss.item()
    assert g_lean[1].dtype == torch.float32
    assert rel(g_lean[0], g_std[0]) <= 1e-2 and rel(g_lean[1], g_std[1]) <= 1e-2


def test_trimmed_positions_equal_the_full_sequence():
    """``logits_to_keep``: the hidden states of the kept positions (batch of one: labelled ones; else a suffix)
    with labels trimmed as ms-swift trims them give the loss and gradients of the full sequence."""
    r0, _ = build_row([[100, 200, 600, 700], [10, 20, 30, 40]], prompt=6)
    r1, _ = build_row([[300, 310, 800, 900], [7, 8]], prompt=5, close_last=False)
    cfg = LossConfig(**{**LossConfig.preset("C").to_dict(), "lambda_gate": 0.5})
    packed = torch.tensor([r0 + r1])
    h0, w0 = make_inputs(packed, torch.float64, seed=4)
    n = torch.tensor(int((packed[:, 1:] != I).sum()))
    h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    full = compute_loss_from_hidden(h, w, packed, VOCAB, cfg, num_items_in_batch=n, chunk_rows=3)
    g_full = torch.autograd.grad(full.loss, (h, w))
    mask = packed[0] != I
    keep = torch.cat([mask[1:], torch.tensor([True])])
    trimmed_labels = F.pad(packed[:, mask], (1, 0), value=I)
    h2, w2 = h0[:, keep].clone().requires_grad_(True), w0.clone().requires_grad_(True)
    trim = compute_loss_from_hidden(h2, w2, trimmed_labels, VOCAB, cfg, num_items_in_batch=n, chunk_rows=3)
    g_trim = torch.autograd.grad(trim.loss, (h2, w2))
    torch.testing.assert_close(trim.loss, full.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_trim[0], g_full[0][:, keep], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g_trim[1], g_full[1], rtol=1e-10, atol=1e-14)
    assert g_full[0][:, ~keep].abs().max() == 0


def test_frozen_head_no_grad_and_scaled_backward():
    labels, _ = two_rows()
    h0, w0 = make_inputs(labels, torch.float64, seed=5)
    cfg = LossConfig(**{**LossConfig.preset("B").to_dict(), "lambda_gate": 0.2})
    # Frozen head (LoRA without modules_to_save): only the hidden states get a gradient.
    h = h0.clone().requires_grad_(True)
    out = compute_loss_from_hidden(h, w0, labels, VOCAB, cfg, chunk_rows=4)
    g_h, = torch.autograd.grad(out.loss, h)
    std, _, g_std, _ = both_paths(h0, w0, labels, cfg)
    assert rel(g_h, g_std[0]) <= 1e-12
    # The trainer's scale on the loss (e.g. a gradient-accumulation factor) reaches both gradients.
    h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    (3.0 * compute_loss_from_hidden(h, w, labels, VOCAB, cfg, chunk_rows=4).loss).backward()
    assert rel(h.grad, 3 * g_std[0]) <= 1e-12 and rel(w.grad, 3 * g_std[1]) <= 1e-12
    # Evaluation: no gradient is built, the values are the same.
    with torch.no_grad():
        ev = compute_loss_from_hidden(h0.clone().requires_grad_(True), w0.clone().requires_grad_(True), labels, VOCAB,
                                      cfg, chunk_rows=4)
    assert ev.loss.grad_fn is None
    torch.testing.assert_close(ev.loss, std.loss.detach(), rtol=1e-12, atol=0)


def test_preds_are_the_full_vocabulary_argmax_of_labelled_positions():
    labels, _ = two_rows()
    h0, w0 = make_inputs(labels, torch.float32, seed=6)
    out = compute_loss_from_hidden(h0, w0, labels, VOCAB, LossConfig.preset("A"), want_preds=True, chunk_rows=5)
    targets = torch.full_like(labels, I)
    targets[:, :-1] = labels[:, 1:]
    labelled = targets != I
    assert torch.equal(out.preds[labelled], (h0 @ w0.t()).argmax(-1)[labelled])


@pytest.mark.parametrize("group", "ABC")
def test_degenerate_batches(group):
    cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), "lambda_gate": 0.1})
    for labels in (torch.tensor([[I, I, 5, 5, 7]]), torch.tensor([[I] * 5, [I] * 5]),
                   torch.tensor([build_row([[1, 2, 3, 4], [5, 6]], tail=())[0]])):
        h0, w0 = make_inputs(labels, torch.float64, seed=7)
        std, lean, g_std, g_lean = both_paths(h0, w0, labels, cfg, chunk_rows=2)
        assert torch.isfinite(lean.loss) and torch.isfinite(g_lean[0]).all() and torch.isfinite(g_lean[1]).all()
        torch.testing.assert_close(lean.loss, std.loss, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(g_lean[1], g_std[1], rtol=1e-10, atol=1e-15)


def test_shape_errors():
    with pytest.raises(ValueError, match="do not match labels"):
        compute_loss_from_hidden(torch.zeros(1, 5, H), torch.zeros(V, H), torch.zeros(1, 6, dtype=torch.long), VOCAB,
                                 LossConfig())
    with pytest.raises(ValueError, match="was not resized"):
        compute_loss_from_hidden(torch.zeros(1, 5, H), torch.zeros(CS + 10, H), torch.zeros(1, 5, dtype=torch.long),
                                 VOCAB, LossConfig())
    with pytest.raises(ValueError, match="do not match"):
        linear_ce_and_coord_logits(torch.zeros(5, H), torch.zeros(V, H + 1), torch.zeros(5, dtype=torch.long),
                                   torch.zeros(5), torch.zeros(0, dtype=torch.long), CS, K)
    assert default_chunk_rows(152704) == 878


# ---------------------------------------------------------------------------------------------- ms-swift glue
@pytest.fixture(scope="module")
def swift_batch(tiny_model_dir, sample_jsonl):
    """A real collated batch of 2 samples from the plugin's template (labels popped as the trainer pops them)."""
    from swift.dataset import load_dataset
    from swift.model import get_model_processor
    from swift.template import get_template

    from swift_coord_plugin.swift_ext.register import register

    register()
    model, processor = get_model_processor(tiny_model_dir, model_type="qwen3_vl_coord", torch_dtype=torch.float32,
                                           download_model=False)
    template = get_template(processor, template_type="qwen3_vl_coord", max_pixels=65536)
    template.set_mode("train")
    template.model = model
    rows, _ = load_dataset([f"coord:{sample_jsonl}"], load_from_cache_file=False)
    batch = template.data_collator([template.encode(dict(rows[i])) for i in range(2)])
    batch.pop("text_position_ids", None)
    labels = batch.pop("labels")
    return processor, batch, labels


@pytest.fixture(scope="module")
def tied_model(tiny_model_dir):
    return _model(tiny_model_dir)


def _model(model_dir):
    from swift.model import get_model_processor

    return get_model_processor(model_dir, model_type="qwen3_vl_coord", torch_dtype=torch.float32,
                               download_model=False)[0]


def _loss(group, lean, monkeypatch, processor):
    from swift.loss import loss_map

    from swift_coord_plugin.core.vocab import CoordVocab
    from swift_coord_plugin.swift_ext import loss as coord_loss

    coord_loss.register()
    if lean:
        monkeypatch.setenv("COORDEXP_LEAN", "1")
    else:
        monkeypatch.delenv("COORDEXP_LEAN", raising=False)
    fn = loss_map[{"A": "coordexp_ce", "B": "coordexp_geom", "C": "coordexp_hybrid"}[group]](None, None)
    fn.vocab = CoordVocab.from_tokenizer(processor.tokenizer)
    assert fn.config.lean is lean
    return fn


def _step(model, batch, labels, fn, lean):
    from swift_coord_plugin.swift_ext.lean import lean_forward

    model.zero_grad(set_to_none=True)
    outputs = lean_forward(model, dict(batch)) if lean else model(**batch)
    loss = fn(outputs, labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, outputs


def _assert_same_step(model, batch, labels, group, monkeypatch, processor, tol=1e-5):
    std_loss, g_std, out_std = _step(model, batch, labels, _loss(group, False, monkeypatch, processor), False)
    lean_loss, g_lean, out_lean = _step(model, batch, labels, _loss(group, True, monkeypatch, processor), True)
    assert out_std.logits is not None and out_lean.logits is None and out_lean.coord_lean.hidden.ndim == 3
    assert abs(lean_loss.item() - std_loss.item()) <= tol * abs(std_loss.item())
    assert g_std.keys() == g_lean.keys() and len(g_std) >= 10
    worst = max(rel(g_lean[k], g_std[k]) for k in g_std if g_std[k].norm() > 0)
    assert worst <= tol, worst
    return g_std


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_swift_model_tied_and_untied_head(which, request, swift_batch, monkeypatch):
    processor, batch, labels = swift_batch
    model = request.getfixturevalue("tied_model") if which == "tied" else _model(
        request.getfixturevalue("tiny_model_untied_dir"))
    head, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert (head.data_ptr() == emb.data_ptr()) == (which == "tied")
    grads = _assert_same_step(model, batch, labels, "C", monkeypatch, processor)
    assert any("lm_head" in k for k in grads) == (which == "untied")


def test_swift_model_lora_modules_to_save(tiny_model_dir, swift_batch, monkeypatch):
    """LoRA with ``modules_to_save``: the head is peft's wrapper; the adapter's copy is the one used and trained,
    and the original again once the adapters are disabled."""
    from peft import LoraConfig, get_peft_model

    from swift_coord_plugin.swift_ext.lean import resolve_head

    processor, batch, labels = swift_batch
    model = get_peft_model(_model(tiny_model_dir), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
        modules_to_save=["lm_head", "embed_tokens"]))
    _, head, linear = resolve_head(model)
    assert type(head).__name__ == "ModulesToSaveWrapper" and linear is head.modules_to_save["default"]
    grads = _assert_same_step(model, batch, labels, "B", monkeypatch, processor)
    assert any("modules_to_save.default" in k and "lm_head" in k for k in grads)
    assert any("lora_A" in k for k in grads)
    with model.disable_adapter():
        assert resolve_head(model)[2] is head.original_module


def test_swift_model_logits_to_keep(tied_model, swift_batch, monkeypatch):
    """ms-swift's two trimmings through the real forward: a suffix (int) for a batch of several sequences and
    a mask of the labelled positions for a batch of one; the captured hidden states follow them."""
    processor, batch, labels = swift_batch
    model = tied_model
    start = int((labels != I).int().argmax(-1).min())
    keep = labels.shape[-1] - start + 1
    suffix = dict(batch, logits_to_keep=keep)
    _assert_same_step(model, suffix, labels[:, -keep:], "C", monkeypatch, processor)
    one = {k: (v[:1] if torch.is_tensor(v) and v.shape[:1] == labels.shape[:1] else v) for k, v in batch.items()}
    one["position_ids"] = batch["position_ids"][:, :1]
    one["pixel_values"] = batch["pixel_values"][: int(batch["image_grid_thw"][0].prod())]
    one["image_grid_thw"] = batch["image_grid_thw"][:1]
    mask = (labels[0] != I)
    one["logits_to_keep"] = F.pad(mask[1:], (0, 1), value=True)
    one_labels = F.pad(labels[:1, mask], (1, 0), value=I)
    _assert_same_step(model, one, one_labels, "A", monkeypatch, processor)


# ---------------------------------------------------------------------------------------------- refusals
def test_refusals_say_why(tiny_model_dir, swift_batch, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from swift_coord_plugin.swift_ext import lean as glue

    processor, batch, labels = swift_batch
    # An adapter on the head itself: the lean path would skip it.
    model = get_peft_model(_model(tiny_model_dir), LoraConfig(r=4, target_modules=["lm_head"]))
    with pytest.raises(glue.LeanPathError, match="not a plain torch.nn.Linear"):
        glue.lean_forward(model, dict(batch))
    # A head with a bias; an architecture the lean path does not know.
    with pytest.raises(glue.LeanPathError, match="bias"):
        glue.effective_linear(torch.nn.Linear(4, 8))
    with pytest.raises(glue.LeanPathError, match="not MyModel"):
        glue.resolve_head(type("MyModel", (torch.nn.Module,), {})())
    # A ZeRO-3 head weight that was not gathered (its partition is empty; ds_shape holds the full shape).
    part = torch.zeros(0)
    part.ds_shape = (V, H)
    with pytest.raises(glue.LeanPathError, match="partitioned .* not gathered"):
        glue.check_gathered(part, torch.zeros(2, H))
    glue.check_gathered(torch.zeros(V, H), torch.zeros(2, H))
    # Outputs without the hidden states (another template), and the ms-swift options that need logits.
    fn = _loss("A", True, monkeypatch, processor)
    with pytest.raises(glue.LeanPathError, match="--template qwen3_vl_coord"):
        fn(SimpleNamespace(logits=torch.zeros(*labels.shape, V)), labels)
    from swift.loss import loss_map

    from swift_coord_plugin.swift_ext.settings import SettingsError

    with pytest.raises(SettingsError, match="enable_dft_loss"):
        loss_map["coordexp_ce"](SimpleNamespace(enable_dft_loss=True, enable_channel_loss=False), None)
    monkeypatch.delenv("COORDEXP_LEAN")
    with pytest.raises(SettingsError, match="enable_dft_loss"):  # refused on the standard path too
        loss_map["coordexp_ce"](SimpleNamespace(enable_dft_loss=True, enable_channel_loss=False), None)
    loss_map["coordexp_ce"](SimpleNamespace(enable_dft_loss=False, enable_channel_loss=False), None)
    assert os.environ.get("COORDEXP_LEAN") is None
