"""Box geometry for the coordinate losses: L1 distance and Generalized IoU (no ms-swift import).

Boxes are ``(x1, y1, x2, y2)`` in normalised image coordinates, shape ``[..., 4]``; every function
works elementwise over the leading dimensions (it pairs ``pred[i]`` with ``target[i]``, unlike
``torchvision.ops.generalized_box_iou`` which builds the ``[N, M]`` matrix of all pairs).

Predicted boxes here are expectations over bins, not detector outputs, so ``x2 < x1`` or
``y2 < y1`` happens (early in training every expectation sits near the middle of the image).
torchvision asserts ``x2 >= x1``; this module defines instead:

* A reversed side has zero extent: ``area = max(x2 - x1, 0) * max(y2 - y1, 0)``. A reversed
  box therefore has zero area and zero intersection with anything (its IoU is 0).
* The smallest enclosing box spans *all* the coordinates given, ``min``/``max`` over both
  boxes' four x values and four y values, so the enclosing term still pulls a reversed or
  collapsed prediction towards the target.
* ``eps`` is added to both denominators, so two identical zero-area boxes give finite values
  and finite gradients (GIoU 0 there) instead of ``0 / 0``.

For boxes with ``x2 >= x1`` and ``y2 >= y1`` and a non-degenerate union this equals the GIoU of
Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019 (up to ``eps``).
"""
from __future__ import annotations

from typing import Tuple

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


def giou(pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Elementwise Generalized IoU in ``[-1, 1]``: ``[..., 4]`` x ``[..., 4]`` -> ``[...]``.

    Tolerates reversed and zero-area boxes as described in the module docstring.
    """
    _check(pred, target)
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
    ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
    # No extra case for reversed sides: if px2 < px1 then min(px2, tx2) <= px2 < px1 <= max(px1, tx1),
    # so the overlap is clamped to zero, consistent with the zero area of a reversed box.
    inter = iw * ih
    union = box_area(pred) + box_area(target) - inter
    iou = inter / (union + eps)
    cx1 = torch.minimum(torch.minimum(px1, px2), torch.minimum(tx1, tx2))
    cy1 = torch.minimum(torch.minimum(py1, py2), torch.minimum(ty1, ty2))
    cx2 = torch.maximum(torch.maximum(px1, px2), torch.maximum(tx1, tx2))
    cy2 = torch.maximum(torch.maximum(py1, py2), torch.maximum(ty1, ty2))
    enclose = (cx2 - cx1) * (cy2 - cy1)
    return iou - (enclose - union) / (enclose + eps)


def giou_loss(pred: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """``1 - GIoU`` in ``[0, 2]``, elementwise: ``[..., 4]`` x ``[..., 4]`` -> ``[...]``."""
    return 1.0 - giou(pred, target, eps=eps)


def geometric_loss(pred: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 1.0,
                   eps: float = DEFAULT_EPS) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-box ``alpha * ||pred - target||_1 + beta * (1 - GIoU)``.

    Returns ``(total, l1, giou_loss)``, each of shape ``[...]`` (the unweighted parts are returned so
    that they can be logged separately).
    """
    l1 = box_l1(pred, target)
    gl = giou_loss(pred, target, eps=eps)
    return alpha * l1 + beta * gl, l1, gl
