"""Box geometry for the coordinate losses: L1, Generalized/Distance/Complete IoU (no ms-swift import).

Public: ``DEFAULT_EPS``, ``box_area``, ``box_l1``, ``box_iou``, ``giou``, ``diou``, ``ciou``, ``giou_loss``,
``diou_loss``, ``ciou_loss``, ``box_loss``, ``box_order_penalty``, .... Design notes:
``docs/design/core_geometry.md``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

DEFAULT_EPS = 1e-7


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape[-1] != 4 or target.shape[-1] != 4:
        raise ValueError(f"boxes must have a last dimension of 4 (x1, y1, x2, y2), got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` boxes -> ``[...]``; a reversed side counts as zero extent."""
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return w * h


def box_l1(pred: Tensor, target: Tensor) -> Tensor:
    """``||pred - target||_1`` over the 4 coordinates: ``[..., 4]`` x ``[..., 4]`` -> ``[...]``."""
    _check(pred, target)
    return (pred - target).abs().sum(dim=-1)


def _intersection_and_union(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """Intersection and union areas of elementwise pairs ``[..., 4]`` -> ``([...], [...])``."""
    _check(pred, target)
    iw = (torch.minimum(pred[..., 2], target[..., 2]) - torch.maximum(pred[..., 0], target[..., 0])).clamp(min=0)
    ih = (torch.minimum(pred[..., 3], target[..., 3]) - torch.maximum(pred[..., 1], target[..., 1])).clamp(min=0)
    # No extra case for reversed sides: if px2 < px1 then min(px2, tx2) <= px2 < px1 <= max(px1, tx1),
    # so the overlap is clamped to zero, consistent with the zero area of a reversed box.
    inter = iw * ih
    return inter, box_area(pred) + box_area(target) - inter


def box_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Exact elementwise IoU (no ``eps``): ``[..., 4]`` x ``[..., 4]`` -> ``[...]`` in ``[0, 1]``.

    Pairs ``pred[i]`` with ``target[i]`` (unlike ``torchvision.ops.box_iou``'s all-pairs matrix). A
    reversed side has zero extent (``box_area``); a zero union gives IoU 0. Raises ``ValueError`` unless the
    last dimension is 4. What the yardsticks measure; the losses use the ``eps`` form inside ``giou``.
    """
    inter, union = _intersection_and_union(pred, target)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def _iou_and_enclosure(pred: Tensor, target: Tensor, eps: float):
    """IoU, union and the enclosing box's corners of elementwise pairs (reversed sides have zero extent)."""
    inter, union = _intersection_and_union(pred, target)
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    iou = inter / (union + eps)
    cx1 = torch.minimum(torch.minimum(px1, px2), torch.minimum(tx1, tx2))
    cy1 = torch.minimum(torch.minimum(py1, py2), torch.minimum(ty1, ty2))
    cx2 = torch.maximum(torch.maximum(px1, px2), torch.maximum(tx1, tx2))
    cy2 = torch.maximum(torch.maximum(py1, py2), torch.maximum(ty1, ty2))
    return iou, union, (cx1, cy1, cx2, cy2)


def giou(pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Elementwise Generalized IoU in ``[-1, 1]``: ``[..., 4]`` x ``[..., 4]`` -> ``[...]``.

    ``IoU - (|C| - |A u B|) / |C|`` with ``C`` the enclosing box (Rezatofighi et al. 2019, Alg. 1).
    Tolerates reversed and zero-area boxes as described in the module docstring.
    """
    iou, union, (cx1, cy1, cx2, cy2) = _iou_and_enclosure(pred, target, eps)
    enclose = (cx2 - cx1) * (cy2 - cy1)
    return iou - (enclose - union) / (enclose + eps)


def _centre_penalty(pred: Tensor, target: Tensor, corners, eps: float) -> Tensor:
    """``rho^2 / c^2``: squared distance of the box centres over the squared diagonal of the enclosing box."""
    cx1, cy1, cx2, cy2 = corners
    diag2 = (cx2 - cx1) ** 2 + (cy2 - cy1) ** 2
    dx = (pred[..., 0] + pred[..., 2] - target[..., 0] - target[..., 2]) / 2
    dy = (pred[..., 1] + pred[..., 3] - target[..., 1] - target[..., 3]) / 2
    return (dx ** 2 + dy ** 2) / (diag2 + eps)


def diou(pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Elementwise Distance IoU in ``[-1, 1]``: ``IoU - rho^2 / c^2`` (Zheng et al. 2020, eq. 6).

    ``rho``: distance between the centres ``((x1 + x2) / 2, (y1 + y2) / 2)`` (a reversed box keeps the
    centre of its coordinates); ``c``: diagonal of the enclosing box. ``[..., 4]`` x ``[..., 4]`` -> ``[...]``.
    """
    iou, _, corners = _iou_and_enclosure(pred, target, eps)
    return iou - _centre_penalty(pred, target, corners, eps)


def ciou(pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Elementwise Complete IoU: ``DIoU - alpha * v`` (Zheng et al. 2020, eqs. 9-11).

    ``v = 4 / pi^2 * (atan(w_t / h_t) - atan(w_p / h_p))^2`` with widths and heights clamped at 0 (a
    reversed side has zero extent) and ``eps`` added to the heights; ``alpha = v / (1 - IoU + v)``, a
    trade-off weight that carries no gradient (as in the paper's reference code and torchvision).
    ``[..., 4]`` x ``[..., 4]`` -> ``[...]``.

    Gradient of the aspect term: ``dv/dw_p`` and ``dv/dh_p`` carry the factor ``1 / (w_p^2 + h_p^2)``, which
    explodes for a nearly-point prediction (what every expected box is at initialisation: 650 per
    coordinate for a 1e-4 x 2e-4 box, against about 0.01 for DIoU). As the paper does ("the dominator
    w^2 + h^2 is simply removed for stable convergence", Sec. 4), that factor is replaced by 1: the value is
    ``v``, its gradient is that of ``v`` times ``(w_p^2 + (h_p + eps)^2)`` (no gradient through the factor),
    so ``|dv/dw_p|, |dv/dh_p| <= 8 / pi^2 * pi / 2 * sqrt(w_p^2 + h_p^2)``. torchvision keeps the factor: the
    values agree, the gradients differ where ``w_p^2 + h_p^2`` is not 1.
    """
    iou, _, corners = _iou_and_enclosure(pred, target, eps)
    d = iou - _centre_penalty(pred, target, corners, eps)
    wp = (pred[..., 2] - pred[..., 0]).clamp(min=0)
    hp = (pred[..., 3] - pred[..., 1]).clamp(min=0)
    wt = (target[..., 2] - target[..., 0]).clamp(min=0)
    ht = (target[..., 3] - target[..., 1]).clamp(min=0)
    v = (4 / math.pi ** 2) * (torch.atan(wt / (ht + eps)) - torch.atan(wp / (hp + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
        step = wp ** 2 + (hp + eps) ** 2
    v = v.detach() + (v - v.detach()) * step
    return d - alpha * v


def giou_loss(pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``1 - GIoU`` in ``[0, 2]``, elementwise: ``[..., 4]`` x ``[..., 4]`` -> ``[...]``."""
    return 1.0 - giou(pred, target, eps=eps)


def diou_loss(pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``1 - DIoU`` in ``[0, 2]``, elementwise: ``[..., 4]`` x ``[..., 4]`` -> ``[...]``."""
    return 1.0 - diou(pred, target, eps=eps)


def ciou_loss(pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``1 - CIoU``, elementwise: ``[..., 4]`` x ``[..., 4]`` -> ``[...]``."""
    return 1.0 - ciou(pred, target, eps=eps)


# The box-loss variants of the geometric term (``COORDEXP_BOX_LOSS``): name -> ``loss(pred, target, eps)``.
# A new variant is one entry here (elementwise, ``[..., 4]`` x ``[..., 4]`` -> ``[...]``).
BOX_LOSSES: Dict[str, Callable[..., Tensor]] = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def box_loss(name: str, pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The box-loss variant ``name`` (``BOX_LOSSES``) of elementwise pairs; ``ValueError`` for an unknown name."""
    try:
        fn = BOX_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown box loss {name!r}; expected one of {sorted(BOX_LOSSES)}") from None
    return fn(pred, target, eps=eps)


def box_order_penalty(pred: Tensor) -> Tensor:
    """``max(x1 - x2, 0) + max(y1 - y2, 0)`` per box, in image fractions: ``[..., 4]`` -> ``[...]``.

    Zero for a box whose corners are in order; grows linearly with how far ``x2`` lies left of ``x1``
    (``y2`` above ``y1``). Its gradient pushes ``x1`` down and ``x2`` up by the same amount.
    """
    if pred.shape[-1] != 4:
        raise ValueError(f"boxes must have a last dimension of 4 (x1, y1, x2, y2), got {tuple(pred.shape)}")
    return (pred[..., 0] - pred[..., 2]).clamp(min=0) + (pred[..., 1] - pred[..., 3]).clamp(min=0)


def match_boxes(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """The matching seam: which predicted box each target box is compared with.

    ``pred [m, 4]``, ``target [m', 4]`` -> ``(pred_index [k], target_index [k])``, pairs ``pred[pred_index[j]]``
    with ``target[target_index[j]]``. This phase is teacher-forced, so the ``i``-th box the model writes is
    the ``i``-th box of the target: the pairing is index-based (``i <-> i``, ``m == m'`` required). Every
    geometric term (L1, the box loss, the order penalty sees the predicted boxes only) goes through here.

    Set-based matching (Hungarian, as in DETR) plugs in here: build the ``[m, m']`` cost matrix per image
    (e.g. ``L1 + (1 - GIoU)`` of all pairs) and solve it with ``scipy.optimize.linear_sum_assignment``;
    boxes must then only be matched within their own sequence, so the caller would pass one image's
    boxes at a time (``SequenceLayout`` gives each box's row).
    """
    if pred.shape[0] != target.shape[0]:
        raise ValueError(f"index-based matching pairs box i with box i: got {pred.shape[0]} predicted and "
                         f"{target.shape[0]} target boxes")
    idx = torch.arange(pred.shape[0], device=pred.device)
    return idx, idx


def geometric_loss(pred: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 1.0,
                   eps: float = DEFAULT_EPS) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-box ``alpha * ||pred - target||_1 + beta * (1 - GIoU)``.

    Returns ``(total, l1, giou_loss)``, each of shape ``[...]`` (the unweighted parts are returned so
    that they can be logged separately).
    """
    l1 = box_l1(pred, target)
    gl = giou_loss(pred, target, eps=eps)
    return alpha * l1 + beta * gl, l1, gl
