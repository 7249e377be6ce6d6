"""L1 and GIoU: agreement with torchvision on valid boxes, defined behaviour on reversed/degenerate ones."""
import torch
from torchvision.ops import generalized_box_iou

from helpers import ciou_loss_paper
from swift_coord_plugin.core.geometry import box_area, box_l1, geometric_loss, giou, giou_loss


def _xyxy(n, gen, dtype=torch.float64):
    x = torch.rand(n, 2, generator=gen, dtype=dtype).sort(dim=1).values
    y = torch.rand(n, 2, generator=gen, dtype=dtype).sort(dim=1).values
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def test_giou_matches_torchvision_on_valid_boxes():
    gen = torch.Generator().manual_seed(0)
    pred, target = _xyxy(500, gen), _xyxy(500, gen)
    ours = giou(pred, target, eps=0.0)
    ref = generalized_box_iou(pred, target).diagonal()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # With the default eps the difference stays at the eps scale.
    torch.testing.assert_close(giou(pred, target), ref, rtol=0, atol=1e-5)


def test_identical_boxes_and_disjoint_boxes():
    b = torch.tensor([[0.1, 0.2, 0.5, 0.6]], dtype=torch.float64)
    assert giou_loss(b, b).item() < 1e-6
    far = torch.tensor([[0.7, 0.8, 0.9, 1.0]], dtype=torch.float64)
    # Disjoint: IoU 0; enclosing box 0.1..0.9 x 0.2..1.0 = 0.64, union 0.16 + 0.04 = 0.2.
    expected = -(0.64 - 0.2) / 0.64
    assert abs(giou(b, far, eps=0.0).item() - expected) < 1e-12


def test_reversed_box_has_zero_area_and_finite_giou():
    target = torch.tensor([[0.2, 0.2, 0.6, 0.6]], dtype=torch.float64)
    pred = torch.tensor([[0.5, 0.3, 0.3, 0.5]], dtype=torch.float64)  # x2 < x1
    assert box_area(pred).item() == 0.0
    # Hand computation: intersection 0, union = 0.16, enclosing box 0.2..0.6 squared = 0.16 -> GIoU 0.
    assert abs(giou(pred, target, eps=0.0).item()) < 1e-12
    # Fully reversed prediction outside the target: enclosing box spans every coordinate given.
    pred2 = torch.tensor([[0.9, 0.9, 0.7, 0.7]], dtype=torch.float64)
    enclose = (0.9 - 0.2) ** 2
    assert abs(giou(pred2, target, eps=0.0).item() - (0 - (enclose - 0.16) / enclose)) < 1e-12
    # The reversed box is not read as its swapped counterpart (0.7, 0.7, 0.9, 0.9): that one has area 0.04,
    # union 0.2 and GIoU -(0.49 - 0.2) / 0.49, higher than the reversed box's.
    swapped = torch.tensor([[0.7, 0.7, 0.9, 0.9]], dtype=torch.float64)
    assert abs(giou(swapped, target, eps=0.0).item() + (0.49 - 0.2) / 0.49) < 1e-12
    assert giou(pred2, target).item() < giou(swapped, target).item()


def test_degenerate_boxes_no_nan_in_values_or_gradients():
    cases = [
        ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]),  # identical points
        ([0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3]),
        ([0.2, 0.4, 0.2, 0.8], [0.2, 0.4, 0.2, 0.8]),  # identical zero-width segments
        ([0.6, 0.6, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]),  # reversed vs point
        ([0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]),
    ]
    for dtype in (torch.float32, torch.float64):
        pred = torch.tensor([p for p, _ in cases], dtype=dtype, requires_grad=True)
        target = torch.tensor([t for _, t in cases], dtype=dtype)
        total, l1, gl = geometric_loss(pred, target, alpha=1.0, beta=1.0)
        assert torch.isfinite(total).all() and torch.isfinite(gl).all()
        total.sum().backward()
        assert torch.isfinite(pred.grad).all()


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    target = _xyxy(6, gen)
    # Generic positions (away from the kinks of min/max/clamp), including reversed predictions.
    pred = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    pred.requires_grad_(True)
    assert (pred[:, 2] < pred[:, 0]).any() or (pred[:, 3] < pred[:, 1]).any()
    assert torch.autograd.gradcheck(lambda p: geometric_loss(p, target, alpha=0.7, beta=1.3)[0], (pred,))
    assert torch.autograd.gradcheck(lambda p: giou(p, target, eps=1e-3), (pred,))


def test_l1_and_weights():
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    t = torch.tensor([[0.2, 0.2, 0.1, 0.5]])
    assert abs(box_l1(p, t).item() - (0.1 + 0.0 + 0.2 + 0.1)) < 1e-6
    total, l1, gl = geometric_loss(p, t, alpha=2.0, beta=3.0)
    torch.testing.assert_close(total, 2.0 * l1 + 3.0 * gl)


def test_eps_argument_is_used():
    p = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    # Union and enclosing box are both zero: GIoU = 0 / eps - 0 / eps = 0 for any eps.
    for eps in (1e-9, 1e-3):
        assert giou(p, p, eps=eps).item() == 0.0
    a = torch.tensor([[0.0, 0.0, 0.1, 0.1]], dtype=torch.float64)
    assert giou(a, a, eps=1e-2).item() < giou(a, a, eps=1e-9).item()


def test_shape_error():
    try:
        giou(torch.zeros(3, 3), torch.zeros(3, 3))
    except ValueError as e:
        assert "last dimension of 4" in str(e)
    else:
        raise AssertionError("expected a ValueError")


# ---------------------------------------------------------------------------------------------- box-loss variants
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss  # noqa: E402

from swift_coord_plugin.core.geometry import (BOX_LOSSES, box_loss, box_order_penalty, ciou_loss, diou,  # noqa: E402
                                              diou_loss, match_boxes)


def test_diou_ciou_match_torchvision_on_valid_boxes():
    gen = torch.Generator().manual_seed(3)
    pred, target = _xyxy(400, gen), _xyxy(400, gen)
    torch.testing.assert_close(diou_loss(pred, target, eps=1e-7), distance_box_iou_loss(pred, target, eps=1e-7),
                               rtol=1e-12, atol=1e-12)
    # torchvision adds no eps to the heights inside atan(w / h); ours does: equal to the eps scale.
    torch.testing.assert_close(ciou_loss(pred, target, eps=1e-7), complete_box_iou_loss(pred, target, eps=1e-7),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(box_loss("giou", pred, target), giou_loss(pred, target), rtol=0, atol=0)
    assert set(BOX_LOSSES) == {"giou", "diou", "ciou"}
    try:
        box_loss("iou", pred, target)
    except ValueError as e:
        assert "giou" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_giou_gives_no_gradient_to_a_collapsed_or_reversed_box_inside_its_target():
    """The claim the documentation used to make (the enclosing term pulls such boxes) is false; DIoU/CIoU pull."""
    target = torch.tensor([[0.2, 0.3, 0.8, 0.9]], dtype=torch.float64)
    for p in ([0.4995, 0.4995, 0.4995, 0.4995],   # the expected box at initialisation: the image centre
              [0.6, 0.6, 0.4, 0.5],               # reversed, inside the target
              [0.3, 0.4, 0.3, 0.7]):              # zero width, inside
        pred = torch.tensor([p], dtype=torch.float64, requires_grad=True)
        val = giou_loss(pred, target)
        g, = torch.autograd.grad(val.sum(), pred)
        assert val.item() == 1.0 and g.abs().max().item() == 0.0, (p, val, g)
        for fn in (diou_loss, ciou_loss):
            g, = torch.autograd.grad(fn(pred, target).sum(), pred)
            assert g.abs().max().item() > 1e-3, (fn.__name__, p, g)
    # Once the prediction sticks out of the target, GIoU's enclosing term does pull it.
    pred = torch.tensor([[0.1, 0.5, 0.1, 0.5]], dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad(giou_loss(pred, target).sum(), pred)
    assert g[0, 0].item() < 0 or g[0, 2].item() < 0  # moving right lowers the loss


def test_diou_is_zero_penalty_for_concentric_boxes_and_finite_on_degenerate_ones():
    a = torch.tensor([[0.2, 0.2, 0.6, 0.6]], dtype=torch.float64)
    b = torch.tensor([[0.3, 0.3, 0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(diou(b, a, eps=0.0), giou(b, a, eps=0.0) * 0 + 0.04 / 0.16)  # IoU only
    point = torch.full((1, 4), 0.5, dtype=torch.float64, requires_grad=True)
    for fn in (diou_loss, ciou_loss):
        v = fn(point, point.detach())
        v.sum().backward()
        assert torch.isfinite(v).all() and torch.isfinite(point.grad).all()


def test_variant_and_order_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    target = _xyxy(6, gen)
    pred = torch.rand(6, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    assert (pred[:, 2] < pred[:, 0]).any() or (pred[:, 3] < pred[:, 1]).any()
    assert torch.autograd.gradcheck(lambda p: diou_loss(p, target, eps=1e-3), (pred,))
    assert torch.autograd.gradcheck(box_order_penalty, (pred,))
    # CIoU's trade-off weight alpha carries no gradient and the aspect term's 1 / (w^2 + h^2) is dropped, both
    # by definition (so a finite-difference check cannot apply): compare with the paper's gradient, written out.
    valid = _xyxy(6, gen).requires_grad_(True)
    g, = torch.autograd.grad(ciou_loss(valid, target, eps=1e-7).sum(), valid)
    g_ref, = torch.autograd.grad(ciou_loss_paper(valid, target).sum(), valid)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_ciou_value_is_torchvisions_and_its_aspect_gradient_is_bounded_near_a_point():
    """At initialisation every expected box is nearly a point; the aspect term's ``1 / (w^2 + h^2)`` made CIoU's
    gradient 650 per coordinate for a 1e-4 x 2e-4 prediction (DIoU: 0.005). With the paper's rule it stays
    within DIoU's order, and the value is unchanged."""
    target = torch.tensor([[0.3, 0.45, 0.7, 0.55]], dtype=torch.float64)
    for p in ([0.4999, 0.4999, 0.5, 0.5001], [0.5, 0.5, 0.5001, 0.50001], [0.499, 0.499, 0.5, 0.5],
              [0.5, 0.5, 0.5, 0.5]):
        pred = torch.tensor([p], dtype=torch.float64, requires_grad=True)
        val = ciou_loss(pred, target, eps=1e-7)
        g, = torch.autograd.grad(val.sum(), pred)
        g_diou, = torch.autograd.grad(diou_loss(pred, target, eps=1e-7).sum(), pred)
        # (ours adds eps to the heights inside atan: 1e-5 high boxes differ from torchvision by about 6e-5)
        if p[2] > p[0] and p[3] > p[1]:  # (torchvision's atan(w / h) is NaN for a point)
            torch.testing.assert_close(val, complete_box_iou_loss(pred.detach(), target, eps=1e-7), rtol=0,
                                       atol=1e-4)
        assert torch.isfinite(g).all()
        # |dv/dw|, |dv/dh| <= 8/pi^2 * pi/2 * sqrt(w^2 + h^2) < 1e-3 here: the gradient is DIoU's plus that.
        assert (g - g_diou).abs().max().item() < 1e-3, (p, g, g_diou)
    # torchvision keeps the factor: the gradient the bound removes.
    pred = torch.tensor([[0.4999, 0.4999, 0.5, 0.5001]], dtype=torch.float64, requires_grad=True)
    g_tv, = torch.autograd.grad(complete_box_iou_loss(pred, target, eps=1e-7).sum(), pred)
    assert g_tv.abs().max().item() > 100


def test_box_order_penalty():
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.2, 0.3, 0.4], [0.5, 0.6, 0.3, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(box_order_penalty(boxes), torch.tensor([0.0, 0.2, 0.7], dtype=torch.float64))


def test_match_boxes_is_index_based():
    a, b = torch.zeros(3, 4), torch.ones(3, 4)
    pi, ti = match_boxes(a, b)
    assert pi.tolist() == ti.tolist() == [0, 1, 2]
    try:
        match_boxes(a, torch.ones(2, 4))
    except ValueError as e:
        assert "index-based" in str(e)
    else:
        raise AssertionError("expected a ValueError")
