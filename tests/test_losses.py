"""The loss as a plain function: configuration, value and gradient against an independent reference,
normalisation (gradient accumulation, trimming, packing) and the degenerate batches."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou

from helpers import CS, DESC, EOT, VOCAB, I, K, S, V, build_row, make_logits, reference_loss, two_rows
from swift_coord_plugin.core.losses import (METRIC_NAMES, LossConfig, LossConfigError, compute_loss,
                                            token_ce_and_coord_logits)


# ---------------------------------------------------------------------------------------------- config
def test_presets():
    a, b, c = (LossConfig.preset(g) for g in "ABC")
    assert (a.use_coord_ce, a.use_coordexp_loss, a.use_geom_loss) == (True, False, False)
    assert (b.use_coord_ce, b.use_coordexp_loss, b.use_geom_loss) == (False, True, True)
    assert (c.use_coord_ce, c.use_coordexp_loss, c.use_geom_loss) == (True, True, True)
    assert a.lambda_gate == b.lambda_gate == c.lambda_gate == 0.0


@pytest.mark.parametrize("kwargs, names", [
    (dict(use_coord_ce=True, use_coordexp_loss=False, use_geom_loss=True), ["use_geom_loss", "use_coordexp_loss"]),
    (dict(use_coord_ce=False, use_coordexp_loss=False, use_geom_loss=False), ["use_coord_ce", "use_coordexp_loss"]),
    (dict(use_coord_ce=True, lambda_coord_ce=0.0), ["use_coord_ce", "lambda_coord_ce"]),
    (dict(use_coordexp_loss=True, lambda_coord=0.0), ["use_coordexp_loss", "lambda_coord"]),
    (dict(use_coordexp_loss=True, use_geom_loss=True, alpha_l1=0.0, beta_giou=0.0), ["alpha_l1", "beta_giou"]),
    (dict(lambda_coord=-1.0), ["lambda_coord"]),
    (dict(beta_giou=float("nan")), ["beta_giou"]),
    (dict(use_coord_ce="yes"), ["use_coord_ce"]),
    (dict(giou_eps=0.0), ["giou_eps"]),
])
def test_contradictory_or_invalid_flags_name_the_flags(kwargs, names):
    with pytest.raises(LossConfigError) as e:
        LossConfig(**kwargs)
    for n in names:
        assert n in str(e.value)


def test_from_env_overrides_and_errors():
    cfg, used = LossConfig.from_env("C", {"COORDEXP_LAMBDA_COORD": "0.25", "COORDEXP_USE_COORD_CE": "false",
                                          "COORDEXP_LAMBDA_GATE": "0.5", "OTHER": "x"})
    assert cfg.lambda_coord == 0.25 and cfg.use_coord_ce is False and cfg.lambda_gate == 0.5
    assert cfg.use_geom_loss is True  # from the preset
    assert set(used) == {"COORDEXP_LAMBDA_COORD", "COORDEXP_USE_COORD_CE", "COORDEXP_LAMBDA_GATE"}
    with pytest.raises(LossConfigError, match="COORDEXP_LAMBDA_CORD"):
        LossConfig.from_env("A", {"COORDEXP_LAMBDA_CORD": "1"})
    with pytest.raises(LossConfigError, match="COORDEXP_ALPHA_L1"):
        LossConfig.from_env("B", {"COORDEXP_ALPHA_L1": "abc"})
    with pytest.raises(LossConfigError, match="COORDEXP_USE_GEOM_LOSS"):
        LossConfig.from_env("B", {"COORDEXP_USE_GEOM_LOSS": "maybe"})
    # Contradiction created by an override: named at construction.
    with pytest.raises(LossConfigError, match="use_geom_loss"):
        LossConfig.from_env("B", {"COORDEXP_USE_COORDEXP_LOSS": "0"})


# ---------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("group, overrides", [
    ("A", {}), ("B", {}), ("C", {}),
    ("C", dict(lambda_coord=0.3, lambda_coord_ce=2.0, alpha_l1=5.0, beta_giou=2.0)),
    ("B", dict(lambda_gate=0.7)),
    ("C", dict(use_geom_loss=False)),  # CoordExp L1 only
])
def test_value_and_gradient_match_the_reference(group, overrides):
    # eps at float64 scale: torchvision's GIoU, the reference, has none.
    cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), "giou_eps": 1e-15, **overrides})
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1], dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
    n_items = int((labels[:, 1:] != I).sum()) + 7  # as if other micro-batches shared the window
    out = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=torch.tensor(n_items))
    ref = reference_loss(logits, labels, boxes, cfg, n_items)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-12)
    g, = torch.autograd.grad(out.loss, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-13)
    assert out.layout.num_boxes == 3 and out.layout.report()["incomplete_objects"] == 1
    torch.testing.assert_close(sum(out.terms.values()), out.loss.detach())


def test_group_b_has_no_cross_entropy_at_coordinate_positions():
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1])
    out = compute_loss(logits, labels, VOCAB, LossConfig.preset("B"))
    g, = torch.autograd.grad(out.loss, logits)
    rows = out.layout.coord_pos
    g2 = g.reshape(-1, V)
    # Only the CoordExp loss reaches coordinate rows: nothing outside the coordinate columns ...
    assert g2[rows][:, :CS].abs().max() == 0 and g2[rows][:, CS + K:].abs().max() == 0
    # ... and nothing at all at the coordinates of the incomplete object (the geometric term skips it).
    lone = rows[out.layout.coord_box < 0]
    assert lone.numel() == 2 and g2[lone].abs().max() == 0
    # Text rows still get their cross-entropy gradient.
    text_rows = out.layout.text_mask.reshape(-1).nonzero().squeeze(1)
    assert (g2[text_rows].abs().sum(-1) > 0).all()


def test_components_against_direct_computation():
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1], seed=3, boxes=[(b, p) for b, p, _ in boxes])
    cfg = LossConfig.preset("C")
    out = compute_loss(logits, labels, VOCAB, cfg)
    comp = {k: v.item() for k, v in out.components().items()}
    assert set(comp) == set(METRIC_NAMES)
    x = logits.detach().double()
    targets = torch.full_like(labels, I)
    targets[:, :-1] = labels[:, 1:]
    is_coord = (targets >= CS) & (targets < CS + K)
    text = (targets != I) & ~is_coord
    ce = F.cross_entropy(x.reshape(-1, V), targets.reshape(-1), ignore_index=I, reduction="none").reshape(2, -1)
    assert math.isclose(comp["text_loss"], (ce[text]).mean().item(), rel_tol=1e-6)
    assert math.isclose(comp["coord_ce_loss"], (ce[is_coord]).mean().item(), rel_tol=1e-6)
    zc = x[is_coord][:, CS:CS + K]
    tb = targets[is_coord] - CS
    p = torch.softmax(zc, -1)
    assert math.isclose(comp["coord_acc"], (zc.argmax(-1) == tb).double().mean().item(), rel_tol=1e-9)
    e = (p * torch.arange(K)).sum(-1)
    assert math.isclose(comp["coord_bin_err"], (e - tb).abs().mean().item(), rel_tol=1e-5)
    mass = torch.softmax(x[is_coord], -1)[:, CS:CS + K].sum(-1)
    assert math.isclose(comp["coord_mass"], mass.mean().item(), rel_tol=1e-5)
    assert math.isclose(comp["gate_loss"], (-mass.log()).mean().item(), rel_tol=1e-4)
    l1s, gls = [], []
    for b, pos, bins in boxes:
        pr = (torch.softmax(x[b, pos, CS:CS + K], -1) * torch.arange(K)).sum(-1) / K
        gt = torch.tensor(bins, dtype=torch.float64) / K
        l1s.append((pr - gt).abs().sum().item())
        gls.append(1 - generalized_box_iou(pr[None], gt[None])[0, 0].item())
    assert math.isclose(comp["coord_l1_loss"], sum(l1s) / 3, rel_tol=1e-5)
    assert math.isclose(comp["coord_giou_loss"], sum(gls) / 3, rel_tol=1e-5)
    assert math.isclose(comp["coord_loss"], comp["coord_l1_loss"] + comp["coord_giou_loss"], rel_tol=1e-9)
    assert comp["incomplete_objects"] == 1


def test_fused_cross_entropy_gradcheck():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 13, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([3, -100, 5, 12, 4, 4, -100])
    rows = torch.tensor([0, 2, 4])

    def f(z):
        ce, coord = token_ce_and_coord_logits(z, targets, rows, 2, 8)
        return ce, (coord ** 2).sum(-1)

    assert torch.autograd.gradcheck(f, (logits,))


# ---------------------------------------------------------------------------------------------- normalisation
def test_gradient_accumulation_invariance():
    """One micro-batch of 4 == 4 accumulated micro-batches of 1 (same num_items_in_batch over the window)."""
    rows, rboxes = [], []
    specs = [[[100, 200, 600, 700], [1, 2, 3, 4]], [[300, 310, 800, 900]], [], [[5, 6, 7, 8], [9, 9]]]
    for i, objs in enumerate(specs):
        r, b = build_row(objs, prompt=2 + i, total=30)
        rows.append(r)
    labels = torch.tensor(rows)
    n_items = torch.tensor(int((labels[:, 1:] != I).sum()))
    for group in "ABC":
        cfg = LossConfig.preset(group)
        logits = make_logits(4, 30, seed=5)
        whole = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=n_items).loss
        g_whole, = torch.autograd.grad(whole, logits)
        acc = torch.zeros_like(logits)
        total = 0.0
        for i in range(4):
            part = logits.detach()[i:i + 1].clone().requires_grad_(True)
            li = compute_loss(part, labels[i:i + 1], VOCAB, cfg, num_items_in_batch=n_items).loss
            li.backward()
            acc[i] = part.grad[0]
            total += li.item()
        assert math.isclose(total, whole.item(), rel_tol=1e-6)
        torch.testing.assert_close(acc, g_whole, rtol=1e-5, atol=1e-9)


def test_logits_to_keep_and_padding_free_give_the_same_loss():
    """A batch of one trimmed as ms-swift does (labelled positions only), and two sequences packed into one
    padding-free row, give the loss and gradients of the untrimmed, separate sequences."""
    r0, _ = build_row([[100, 200, 600, 700], [10, 20, 30, 40]], prompt=6)
    r1, _ = build_row([[300, 310, 800, 900], [7, 8]], prompt=5, close_last=False)
    cfg = LossConfig(**{**LossConfig.preset("C").to_dict(), "lambda_gate": 0.5})
    packed = torch.tensor([r0 + r1])
    T = packed.shape[1]
    logits = make_logits(1, T, seed=9)
    n = torch.tensor(int((packed[:, 1:] != I).sum()))
    full = compute_loss(logits, packed, VOCAB, cfg, num_items_in_batch=n)
    g_full, = torch.autograd.grad(full.loss, logits)
    # Trimming (ms-swift's prepare_logits_to_keep for a batch of one): keep the logits whose next label is
    # labelled, plus the last one; drop the ignored labels and put one ignored label in front.
    mask = packed[0] != I
    keep = torch.cat([mask[1:], torch.tensor([True])])
    trimmed_labels = F.pad(packed[:, mask], (1, 0), value=I)
    trimmed_logits = logits.detach()[:, keep].clone().requires_grad_(True)
    trim = compute_loss(trimmed_logits, trimmed_labels, VOCAB, cfg, num_items_in_batch=n)
    torch.testing.assert_close(trim.loss, full.loss, rtol=1e-6, atol=0)
    g_trim, = torch.autograd.grad(trim.loss, trimmed_logits)
    torch.testing.assert_close(g_trim, g_full[:, keep], rtol=1e-5, atol=1e-9)
    assert g_full[:, ~keep].abs().max() == 0
    # Packed == the two sequences as separate micro-batches sharing the denominator.
    T0 = len(r0)
    parts = 0.0
    for sl, lab in ((slice(0, T0), r0), (slice(T0, T), r1)):
        parts += compute_loss(logits.detach()[:, sl], torch.tensor([lab]), VOCAB, cfg, num_items_in_batch=n).loss
    torch.testing.assert_close(parts, full.loss.detach(), rtol=1e-6, atol=0)


def test_loss_scale_of_ones_changes_nothing_and_zero_removes_a_token():
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1], seed=4)
    cfg = LossConfig.preset("C")
    base = compute_loss(logits, labels, VOCAB, cfg).loss
    ones = compute_loss(logits, labels, VOCAB, cfg, loss_scale=torch.ones(labels.numel())).loss
    torch.testing.assert_close(base, ones)
    scale = torch.ones(labels.numel())
    scale[0 * 32 + 3] = 0.0  # the target of logits[0, 3]: the first <obj_start>
    out = compute_loss(logits, labels, VOCAB, cfg, loss_scale=scale)
    x = logits.detach()
    ce3 = F.cross_entropy(x[0, 3][None], labels[0, 4][None]).item()
    n = (labels[:, 1:] != I).sum().item()
    assert math.isclose(base.item() - out.loss.item(), ce3 / n, rel_tol=1e-4)


# ---------------------------------------------------------------------------------------------- dtypes, edge cases
def test_bf16_logits_are_upcast():
    labels, boxes = two_rows()
    logits32 = make_logits(2, labels.shape[1], seed=6)
    logits16 = logits32.detach().bfloat16().requires_grad_(True)
    for group in "ABC":
        cfg = LossConfig.preset(group)
        l16 = compute_loss(logits16, labels, VOCAB, cfg)
        l32 = compute_loss(logits16.detach().float(), labels, VOCAB, cfg)
        assert l16.loss.dtype == torch.float32
        torch.testing.assert_close(l16.loss, l32.loss, rtol=1e-6, atol=0)
        g, = torch.autograd.grad(l16.loss, logits16)
        assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


@pytest.mark.parametrize("group", "ABC")
def test_degenerate_batches_are_finite(group):
    cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), "lambda_gate": 0.1})
    cases = {
        "no coordinate token": torch.tensor([[I, I, DESC, DESC, EOT]]),
        "nothing labelled": torch.tensor([[I] * 5, [I] * 5]),
        "truncated last object": torch.tensor([build_row([[1, 2, 3, 4], [5, 6]], tail=())[0]]),
        "only a marker": torch.tensor([[I, S, I, I]]),
    }
    for name, labels in cases.items():
        for n_items in (None, torch.tensor(11)):
            logits = make_logits(*labels.shape, seed=1)
            out = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=n_items)
            assert torch.isfinite(out.loss), name
            g, = torch.autograd.grad(out.loss, logits)
            assert torch.isfinite(g).all(), name
            assert torch.isfinite(out.metric_sums).all() and torch.isfinite(out.metric_counts).all(), name


def test_shape_and_vocabulary_errors():
    with pytest.raises(ValueError, match="do not match labels"):
        compute_loss(torch.zeros(1, 5, V), torch.zeros(1, 6, dtype=torch.long), VOCAB, LossConfig())
    with pytest.raises(ValueError, match="was not resized"):
        compute_loss(torch.zeros(1, 5, CS + 10), torch.zeros(1, 5, dtype=torch.long), VOCAB, LossConfig())


# ---------------------------------------------------------------------------------------------- logged = trained
@pytest.mark.parametrize("group, overrides", [
    ("B", dict(use_geom_loss=False)), ("C", dict(use_geom_loss=False, alpha_l1=2.0)), ("B", {}),
    ("C", dict(beta_giou=3.0, lambda_coord=0.5)), ("B", dict(box_loss="diou")),
])
def test_logged_coord_loss_is_the_trained_term(group, overrides):
    """``coord_loss`` (mean per box) times 4 boxes-tokens, lambda_coord and the box count over the denominator is
    exactly the coordinate term added to the loss; with use_geom_loss off it holds no GIoU part."""
    cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), **overrides})
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1], seed=11, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
    n_items = 40
    out = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=n_items)
    comp = {k: v.item() for k, v in out.components().items()}
    m = out.layout.num_boxes
    logged_as_trained = cfg.lambda_coord * 4 * comp["coord_loss"] * m / n_items
    assert math.isclose(logged_as_trained, out.terms["coord"].item(), rel_tol=1e-12)
    if not cfg.use_geom_loss:
        assert comp["coord_giou_loss"] > 0.1  # there is a GIoU part, and it is left out
        assert math.isclose(comp["coord_loss"], cfg.alpha_l1 * comp["coord_l1_loss"], rel_tol=1e-12)


def test_group_a_logs_the_l1_term_its_flags_select():
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1], seed=11, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
    comp = {k: v.item() for k, v in compute_loss(logits, labels, VOCAB, LossConfig.preset("A")).components().items()}
    assert comp["coord_loss"] == comp["coord_l1_loss"]


# ---------------------------------------------------------------------------------------------- zero-area targets
@pytest.mark.parametrize("box_loss", ["giou", "diou", "ciou"])
def test_a_zero_area_target_gets_l1_only(box_loss):
    """A target whose x1 and x2 (or y1 and y2) share a bin has IoU 0 against anything: the IoU term must not
    reach it (the data path widens such boxes; the loss guards targets written otherwise)."""
    r0, b0 = build_row([[100, 200, 100, 700], [300, 400, 600, 400], [10, 20, 30, 40]], prompt=4, total=32)
    labels = torch.tensor([r0])
    logits = make_logits(1, labels.shape[1], seed=2, dtype=torch.float64, boxes=[(0, p) for p, _ in b0])
    cfg = LossConfig(**{**LossConfig.preset("B").to_dict(), "box_loss": box_loss})
    out = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=30)
    g, = torch.autograd.grad(out.loss, logits)
    l1_only = compute_loss(logits, labels, VOCAB, LossConfig(**{**cfg.to_dict(), "use_geom_loss": False}),
                           num_items_in_batch=30)
    g_l1, = torch.autograd.grad(l1_only.loss, logits)
    flat_rows = [t for pos, _ in b0[:2] for t in pos]
    torch.testing.assert_close(g[0, flat_rows], g_l1[0, flat_rows], rtol=0, atol=0)
    ok_rows = b0[2][0]
    assert (g[0, ok_rows] - g_l1[0, ok_rows]).abs().max() > 1e-6  # the valid box keeps its IoU term


def test_lambda_coord_is_per_coordinate_token():
    """The stated convention (docs/losses.md, coordexp_config.json ``lambda_coord_per``): the spec's per-box
    ``lambda_box * sum_boxes G / num_items`` is ``lambda_coord = lambda_box / 4``."""
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1], seed=12, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
    lambda_box, n_items = 2.0, 40
    cfg = LossConfig(**{**LossConfig.preset("B").to_dict(), "lambda_coord": lambda_box / 4})
    out = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=n_items)
    sum_g = out.components()["coord_loss"].item() * out.layout.num_boxes
    assert math.isclose(out.terms["coord"].item(), lambda_box * sum_g / n_items, rel_tol=1e-12)
