"""The loss switches (box-loss variant, soft-label CE, Wasserstein-1, box-order penalty): configuration, value and
gradient against independent formulas, independence from the groups and from each other, the lean path, and the
spec's defaults reproducing the loss recorded before the switches existed (to float64 rounding)."""
import json

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss

from helpers import CS, I, K, V, VOCAB, ciou_loss_paper, make_logits, reference_loss, two_rows
from loss_baseline import CASES as BASELINE_CASES
from loss_baseline import PATH as BASELINE_PATH
from loss_baseline import compare as compare_with_baseline
from loss_baseline import compute as compute_baseline
from swift_coord_plugin.core.losses import (LossConfig, LossConfigError, compute_loss, compute_loss_from_hidden,
                                            gaussian_soft_labels, logged_metric_names, soft_label_ce,
                                            wasserstein1_to_bin)


# ---------------------------------------------------------------------------------------------- defaults
def test_defaults_reproduce_the_recorded_loss():
    """Groups A/B/C (and gate, weights) on both paths: loss, logged sums and gradients equal to the values the
    code gave before the switches were added (``tests/loss_baseline.py``), to float64 rounding
    (``loss_baseline.RTOL``), as the numbers may have been recorded on another machine."""
    recorded = json.loads(BASELINE_PATH.read_text())
    now = compute_baseline()
    assert recorded.keys() == now.keys() and all(recorded[c].keys() == now[c].keys() for c in now)
    for case, paths in recorded.items():
        if not LossConfig.preset(case.split("_")[0]).use_geom_loss:
            for rec in paths.values():
                # Changed on purpose: the logged coord_loss is the G that use_geom_loss selects; with it off (group
                # A) it is alpha_l1 * L1 (alpha_l1 = 1 in these cases), not L1 + GIoU as recorded.
                rec["metric_sums"]["coord_loss"] = rec["metric_sums"]["coord_l1_loss"]
    mismatches = compare_with_baseline(now, recorded)
    assert not mismatches, "\n".join(mismatches[:20])


@pytest.fixture(scope="module")
def baseline_inputs():
    """(case, input name) -> the inputs ``compute_baseline`` uses: the standard path's logits, the lean path's
    hidden states and head weight."""
    inputs = {}

    def record(case, input_name, t):
        inputs[case, input_name] = t.detach().clone()
    compute_baseline(perturb=record, paths=())
    return inputs


def _largest_effect_on_the_loss(inputs, case, input_name):
    """Flat index of the input with the largest ``|x * dL/dx|`` (lean path)."""
    group, overrides = BASELINE_CASES[case]
    cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), **overrides})
    h, w = inputs[case, "hidden"].clone(), inputs[case, "weight"].clone()
    x = (h if input_name == "hidden" else w).requires_grad_(True)
    o = compute_loss_from_hidden(h, w, two_rows()[0], VOCAB, cfg, num_items_in_batch=torch.tensor(40), chunk_rows=16)
    g, = torch.autograd.grad(o.loss, x)
    return int((x.detach() * g).abs().argmax())


@pytest.mark.parametrize("input_name, path", [("logits", "standard"), ("hidden", "lean"), ("weight", "lean")])
def test_the_recorded_loss_comparison_sees_a_1e_9_change_of_one_input(input_name, path, baseline_inputs):
    """Each tolerance of the comparison above (loss, metric sums, gradients) fails in every case when one input
    is multiplied by ``1 + 1e-9``: for the logits, the largest logit of a position with a target (the most
    probable token there, whose own gradient moves most); for the hidden states and head weight, the input
    with the largest ``|x * dL/dx|``."""
    recorded = json.loads(BASELINE_PATH.read_text())
    labels = two_rows()[0]
    has_target = torch.cat([labels[:, 1:] != I, torch.zeros(2, 1, dtype=torch.bool)], 1)
    chosen = {}
    for case in BASELINE_CASES:
        if input_name == "logits":
            z = baseline_inputs[case, "logits"]
            chosen[case] = int(torch.where(has_target[..., None], z, -torch.inf).argmax())
        else:
            chosen[case] = _largest_effect_on_the_loss(baseline_inputs, case, input_name)

    def perturb(case, name, t):
        if name == input_name:
            t.view(-1)[chosen[case]] *= 1 + 1e-9
    mismatches = compare_with_baseline(compute_baseline(perturb=perturb, paths=(path,)), recorded)
    for case in BASELINE_CASES:
        where = f"{case}/{path} "
        found = [m[len(where):] for m in mismatches if m.startswith(where)]
        assert any(m.startswith("loss:") for m in found), (case, found)
        assert any(m.startswith("metric_sums.") for m in found), (case, found)
        assert any(m.startswith("grad.") for m in found), (case, found)


def test_switches_are_off_by_default():
    for g in "ABC":
        cfg = LossConfig.preset(g)
        assert (cfg.box_loss, cfg.lambda_soft_ce, cfg.lambda_w1, cfg.lambda_box_order) == ("giou", 0, 0, 0)
        assert set(logged_metric_names(cfg)).isdisjoint(
            {"coord_box_loss", "coord_soft_ce_loss", "coord_w1_loss", "coord_box_order_loss", "gate_loss"})


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, name", [
    (dict(box_loss="iou"), "box_loss"), (dict(soft_ce_sigma=0.0), "soft_ce_sigma"),
    (dict(lambda_w1=-1.0), "lambda_w1"), (dict(lambda_soft_ce=float("inf")), "lambda_soft_ce"),
    (dict(lambda_box_order="1"), "lambda_box_order"), (dict(box_loss=1), "box_loss"),
])
def test_invalid_switch_values_name_the_switch(kwargs, name):
    with pytest.raises(LossConfigError, match=name):
        LossConfig(**kwargs)


def test_switches_from_env():
    cfg, used = LossConfig.from_env("A", {"COORDEXP_BOX_LOSS": " CIoU ", "COORDEXP_LAMBDA_SOFT_CE": "0.5",
                                          "COORDEXP_SOFT_CE_SIGMA": "3", "COORDEXP_LAMBDA_W1": "2",
                                          "COORDEXP_LAMBDA_BOX_ORDER": "1e-1"})
    assert (cfg.box_loss, cfg.lambda_soft_ce, cfg.soft_ce_sigma, cfg.lambda_w1, cfg.lambda_box_order) == \
        ("ciou", 0.5, 3.0, 2.0, 0.1)
    assert cfg.use_coord_ce and not cfg.use_coordexp_loss  # group A's preset untouched
    with pytest.raises(LossConfigError, match="COORDEXP_BOX_LOSS"):
        LossConfig.from_env("B", {"COORDEXP_BOX_LOSS": "l2"})
    with pytest.raises(LossConfigError, match="COORDEXP_LAMBDA_W1"):
        LossConfig.from_env("B", {"COORDEXP_LAMBDA_W1": "x"})


# ---------------------------------------------------------------------------------------------- term formulas
def test_soft_labels_and_soft_ce_against_direct_formulas():
    bins = torch.tensor([0, 7, 999, 500])
    q = gaussian_soft_labels(bins, K, 2.5, torch.float64)
    k = torch.arange(K, dtype=torch.float64)
    for row, b in zip(q, bins.tolist()):
        w = torch.exp(-(k - b) ** 2 / (2 * 2.5 ** 2))
        torch.testing.assert_close(row, w / w.sum(), rtol=1e-12, atol=1e-15)
    z = torch.randn(4, K, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # F.cross_entropy with probability targets is an independent implementation of -sum q log softmax(z).
    ref = F.cross_entropy(z, q, reduction="none")
    torch.testing.assert_close(soft_label_ce(torch.log_softmax(z, -1), bins, 2.5), ref, rtol=1e-12, atol=1e-12)
    # Minimum at p = q, where it equals the entropy of q.
    log_q = torch.log_softmax(-(k[None] - bins[:, None]) ** 2 / (2 * 2.5 ** 2), -1)
    ent = -torch.special.xlogy(q, q).sum(-1)
    torch.testing.assert_close(soft_label_ce(log_q, bins, 2.5), ent, rtol=1e-10, atol=1e-12)


def test_w1_equals_the_cdf_difference_form():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(6, K, generator=g, dtype=torch.float64) * 3, -1)
    bins = torch.tensor([0, 1, 499, 500, 998, 999])
    cdf_p = p.cumsum(-1)
    cdf_t = (torch.arange(K)[None] >= bins[:, None]).double()
    ref = (cdf_p - cdf_t).abs().sum(-1) / K
    torch.testing.assert_close(wasserstein1_to_bin(p, bins), ref, rtol=1e-10, atol=1e-13)
    # A point mass on the target costs 0; on the neighbour bin, one bin (1 / K of the image).
    onehot = F.one_hot(bins, K).double()
    assert wasserstein1_to_bin(onehot, bins).abs().max() == 0
    shifted = F.one_hot((bins[:5] + 1), K).double()
    torch.testing.assert_close(wasserstein1_to_bin(shifted, bins[:5]), torch.full((5,), 1 / K, dtype=torch.float64))


def test_term_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 12, generator=g, dtype=torch.float64, requires_grad=True)
    bins = torch.tensor([0, 5, 11])
    assert torch.autograd.gradcheck(lambda x: soft_label_ce(torch.log_softmax(x, -1), bins, 1.5), (z,))
    assert torch.autograd.gradcheck(lambda x: wasserstein1_to_bin(torch.softmax(x, -1), bins, 12), (z,))


# ---------------------------------------------------------------------------------------------- in the loss
def reference_with_switches(logits, labels, boxes, cfg, num_items):
    """``reference_loss`` (the groups) plus the switches written out from their definitions: soft CE with
    F.cross_entropy's probability targets, W1 in its CDF form, the order penalty, DIoU/CIoU from torchvision."""
    base_cfg = LossConfig(**{**cfg.to_dict(), "box_loss": "giou", "lambda_soft_ce": 0.0, "lambda_w1": 0.0,
                             "lambda_box_order": 0.0})
    if cfg.box_loss != "giou" and cfg.use_coordexp_loss:
        base_cfg = LossConfig(**{**base_cfg.to_dict(), "use_geom_loss": False})
    total = reference_loss(logits, labels, boxes, base_cfg, num_items) * num_items
    x = logits.double()
    targets = torch.full_like(labels, I)
    targets[:, :-1] = labels[:, 1:]
    is_coord = (targets >= CS) & (targets < CS + K)
    zc, tb = x[is_coord][:, CS:CS + K], targets[is_coord] - CS
    if cfg.lambda_soft_ce > 0:
        kk = torch.arange(K, dtype=torch.float64)
        q = torch.exp(-(kk[None] - tb[:, None].double()) ** 2 / (2 * cfg.soft_ce_sigma ** 2))
        total = total + cfg.lambda_soft_ce * F.cross_entropy(zc, q / q.sum(-1, keepdim=True), reduction="sum")
    if cfg.lambda_w1 > 0:
        cdf = torch.softmax(zc, -1).cumsum(-1)
        step = (torch.arange(K)[None] >= tb[:, None]).double()
        total = total + cfg.lambda_w1 * (cdf - step).abs().sum() / K
    kk = torch.arange(K, dtype=torch.float64)
    for b, pos, bins in boxes:
        pred = (torch.softmax(x[b, pos, CS:CS + K], -1) * kk).sum(-1) / K
        gt = torch.tensor(bins, dtype=torch.float64) / K
        if cfg.use_coordexp_loss and cfg.use_geom_loss and cfg.box_loss != "giou":
            fn = {"diou": distance_box_iou_loss, "ciou": ciou_loss_paper}[cfg.box_loss]
            kw = {"eps": 1e-15} if cfg.box_loss == "diou" else {}
            total = total + cfg.lambda_coord * 4 * cfg.beta_giou * fn(pred[None], gt[None], **kw)[0]
        if cfg.lambda_box_order > 0:
            pen = torch.relu(pred[0] - pred[2]) + torch.relu(pred[1] - pred[3])
            total = total + cfg.lambda_box_order * 4 * pen
    return total / num_items


CASES = [
    ("A", dict(lambda_soft_ce=0.5, soft_ce_sigma=3.0)),
    ("B", dict(lambda_w1=2.0)),
    ("C", dict(box_loss="diou")),
    ("B", dict(box_loss="ciou", beta_giou=2.0)),
    ("A", dict(lambda_box_order=1.5)),
    ("C", dict(lambda_soft_ce=1.0, lambda_w1=1.0, lambda_gate=0.3, box_loss="ciou", lambda_box_order=0.5)),
]


def _logits_with_reversed_box(labels, boxes):
    """Valid boxes except the last, whose expected x2 lies left of x1 (so the order penalty is active)."""
    logits = make_logits(2, labels.shape[1], seed=4, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes[:-1]])
    b, pos, _ = boxes[-1]
    ramp = torch.linspace(-4.0, 4.0, K, dtype=torch.float64)
    with torch.no_grad():
        for j, t in enumerate(pos):
            logits[b, t, CS:CS + K] += ramp * 3 if j == 0 else (-ramp * 3 if j == 2 else 0)
    return logits


@pytest.mark.parametrize("group, switches", CASES)
def test_switch_value_and_gradient_match_the_reference(group, switches):
    cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), "giou_eps": 1e-15, **switches})
    labels, boxes = two_rows()
    if cfg.lambda_box_order > 0 and not cfg.use_geom_loss:
        logits = _logits_with_reversed_box(labels, boxes)  # torchvision's IoUs (the reference) need x2 >= x1
    else:
        logits = make_logits(2, labels.shape[1], seed=4, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
    n_items = int((labels[:, 1:] != I).sum()) + 3
    out = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=n_items)
    if cfg.lambda_box_order > 0 and not cfg.use_geom_loss:
        assert out.terms["box_order"] > 0
    ref = reference_with_switches(logits, labels, boxes, cfg, n_items)
    # torchvision's CIoU always uses eps = 1e-7 inside its DIoU part (it does not pass its eps on).
    tol = dict(rtol=1e-6, atol=1e-9) if cfg.box_loss == "ciou" else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss, ref, **tol)
    g, = torch.autograd.grad(out.loss, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g, g_ref, **(dict(rtol=1e-5, atol=1e-9) if cfg.box_loss == "ciou" else
                                            dict(rtol=1e-8, atol=1e-12)))
    torch.testing.assert_close(sum(out.terms.values()), out.loss.detach())


@pytest.mark.parametrize("group", "ABC")
def test_each_switch_adds_only_its_own_term(group):
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1], seed=7, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
    base_cfg = LossConfig.preset(group)
    base = compute_loss(logits, labels, VOCAB, base_cfg)
    singles = {"soft_ce": dict(lambda_soft_ce=0.7), "w1": dict(lambda_w1=1.3), "box_order": dict(lambda_box_order=2.0)}
    both = {}
    for name, sw in singles.items():
        out = compute_loss(logits, labels, VOCAB, LossConfig(**{**base_cfg.to_dict(), **sw}))
        torch.testing.assert_close(out.loss - base.loss, out.terms[name], rtol=1e-10, atol=1e-12)
        for k in base.terms:
            torch.testing.assert_close(out.terms[k], base.terms[k], rtol=0, atol=0)
        both.update(sw)
    out = compute_loss(logits, labels, VOCAB, LossConfig(**{**base_cfg.to_dict(), **both}))
    torch.testing.assert_close(out.loss, base.loss + sum(out.terms[n] for n in singles), rtol=1e-10, atol=1e-12)


def test_switches_on_the_lean_path_equal_the_standard_path():
    labels, boxes = two_rows()
    gen = torch.Generator().manual_seed(8)
    H = 16
    hidden = torch.randn(2, labels.shape[1], H, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = (0.3 * torch.randn(V, H, generator=gen, dtype=torch.float64)).requires_grad_(True)
    cfg = LossConfig(**{**LossConfig.preset("C").to_dict(), "lambda_soft_ce": 1.0, "lambda_w1": 0.5,
                        "lambda_box_order": 2.0, "box_loss": "diou", "lambda_gate": 0.2})
    lean = compute_loss_from_hidden(hidden, weight, labels, VOCAB, cfg, chunk_rows=8)
    std = compute_loss(hidden @ weight.t(), labels, VOCAB, cfg)
    torch.testing.assert_close(lean.loss, std.loss, rtol=1e-12, atol=1e-12)
    gl = torch.autograd.grad(lean.loss, (hidden, weight))
    gs = torch.autograd.grad(std.loss, (hidden, weight))
    for a, b in zip(gl, gs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lean.metric_sums, std.metric_sums, rtol=1e-10, atol=1e-12)


def test_switch_components_are_logged():
    labels, boxes = two_rows()
    logits = make_logits(2, labels.shape[1], seed=9, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
    cfg = LossConfig(**{**LossConfig.preset("B").to_dict(), "lambda_soft_ce": 1.0, "lambda_w1": 1.0,
                        "lambda_box_order": 1.0, "box_loss": "ciou"})
    names = logged_metric_names(cfg)
    assert {"coord_box_loss", "coord_soft_ce_loss", "coord_w1_loss", "coord_box_order_loss"} <= set(names)
    comp = {k: v.item() for k, v in compute_loss(logits, labels, VOCAB, cfg).components().items()}
    x = logits.detach()
    targets = torch.full_like(labels, I)
    targets[:, :-1] = labels[:, 1:]
    is_coord = (targets >= CS) & (targets < CS + K)
    zc, tb = x[is_coord][:, CS:CS + K], targets[is_coord] - CS
    p = torch.softmax(zc, -1)
    w1 = ((p * (torch.arange(K)[None] - tb[:, None]).abs()).sum(-1) / K).mean().item()
    assert abs(comp["coord_w1_loss"] - w1) < 1e-12
    kk = torch.arange(K, dtype=torch.float64)
    cious = []
    for b, pos, bins in boxes:
        pred = (torch.softmax(x[b, pos, CS:CS + K], -1) * kk).sum(-1) / K
        cious.append(complete_box_iou_loss(pred[None], torch.tensor(bins, dtype=torch.float64)[None] / K).item())
    assert abs(comp["coord_box_loss"] - sum(cious) / len(cious)) < 1e-6
    assert abs(comp["coord_loss"] - (comp["coord_l1_loss"] + comp["coord_box_loss"])) < 1e-12
    assert comp["coord_box_order_loss"] == 0.0  # valid boxes
