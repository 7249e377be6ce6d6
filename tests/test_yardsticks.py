"""Common yardsticks: teacher-forced IoU of the argmax and CoordExp boxes, against independent formulas."""
import math

import pytest
import torch

from swift_coord_plugin.core.geometry import box_iou
from swift_coord_plugin.core.yardsticks import YARDSTICK_NAMES, ordered_boxes, teacher_forced_ious, yardstick_sums


def _iou_ref(a, b):
    """Plain-Python IoU of two ordered boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_box_iou_matches_torchvision_and_plain_formula():
    from torchvision.ops import box_iou as tv_box_iou

    g = torch.Generator().manual_seed(0)
    a = torch.rand(50, 4, generator=g, dtype=torch.float64)
    b = torch.rand(50, 4, generator=g, dtype=torch.float64)
    a, b = ordered_boxes(a), ordered_boxes(b)
    got = box_iou(a, b)
    assert torch.allclose(got, tv_box_iou(a, b).diagonal(), atol=1e-12)
    assert got[3].item() == pytest.approx(_iou_ref(a[3].tolist(), b[3].tolist()))
    # Reversed box has zero area; a zero union gives 0, not nan.
    assert box_iou(torch.tensor([0.5, 0.5, 0.2, 0.9]), torch.tensor([0.1, 0.1, 0.6, 0.6])).item() == 0
    assert box_iou(torch.zeros(4), torch.zeros(4)).item() == 0


def test_teacher_forced_ious_and_sums():
    K = 1000
    # Two boxes; target bins of box 0 = (100, 100, 300, 300), box 1 = (500, 500, 900, 700).
    bins = torch.tensor([100, 100, 300, 300, 500, 500, 900, 700])
    logits = torch.full((8, K), -30.0, dtype=torch.float64)
    # Box 0: argmax exactly right; the distribution has a second mode 100 bins further on x2 (expected x2 = 325).
    for i, k in enumerate(bins.tolist()):
        logits[i, k] = 10.0
    logits[2, 400] = 10.0 - math.log(3.0)  # p(300) = 3/4, p(400) = 1/4 -> E = 325; argmax 300
    # Box 1: argmax writes x1 and x2 swapped (900, 500): repaired like the parser does -> exact.
    logits[4, 500], logits[4, 900] = -30.0, 10.0
    logits[6, 900], logits[6, 500] = -30.0, 10.0
    box_coords = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    iou_a, iou_e = teacher_forced_ious(logits, bins, box_coords)
    assert iou_a.tolist() == pytest.approx([1.0, 1.0])
    # Independent: the CoordExp box 0 is (0.1, 0.1, 0.325, 0.3) vs target (0.1, 0.1, 0.3, 0.3).
    assert iou_e[0].item() == pytest.approx(_iou_ref([0.1, 0.1, 0.325, 0.3], [0.1, 0.1, 0.3, 0.3]), abs=1e-9)
    sums, counts = yardstick_sums(logits, bins, box_coords)
    assert len(YARDSTICK_NAMES) == sums.numel() == counts.numel() == 6
    assert counts.tolist() == [2.0] * 6
    got = dict(zip(YARDSTICK_NAMES, (sums / counts).tolist()))
    assert got["box_iou_argmax"] == pytest.approx(1.0) and got["box_iou_argmax_at75"] == 1.0
    e0 = _iou_ref([0.1, 0.1, 0.325, 0.3], [0.1, 0.1, 0.3, 0.3])
    assert got["box_iou_coordexp"] == pytest.approx((e0 + iou_e[1].item()) / 2)
    # No boxes: zero counts, nothing added.
    s0, c0 = yardstick_sums(logits, bins, torch.zeros(0, 4, dtype=torch.long))
    assert c0.sum() == 0 and s0.sum() == 0
