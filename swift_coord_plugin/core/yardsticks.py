"""Common yardsticks: teacher-forced box quality that every loss group is measured by the same way.

Public: ``IOU_THRESHOLDS``, ``YARDSTICK_NAMES``, ``ordered_boxes``, ``teacher_forced_ious``, ``yardstick_metrics``,
``yardstick_sums``. Design notes: ``docs/design/core_yardsticks.md``.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .coordexp import argmax_bins, dequantize_bins, expected_bins
from .geometry import box_iou
from .loss_metrics import Metrics, metric_entry, stack_metrics

IOU_THRESHOLDS = (0.5, 0.75)
_DECODES = ("argmax", "coordexp")
_AT = tuple(f"_at{round(t * 100)}" for t in IOU_THRESHOLDS)  # "_at50", "_at75"
# (name, kind): every yardstick is a mean over the boxes of the logging interval.
YARDSTICKS: Tuple[Tuple[str, str], ...] = tuple(
    (f"box_iou_{decode}{suffix}", "mean")
    for decode in _DECODES
    for suffix in ("",) + _AT)
YARDSTICK_NAMES = tuple(name for name, _ in YARDSTICKS)
# Every curve the comparison measures all groups on, and whether higher is better (logged names; the
# eval rows carry them with an ``eval_`` prefix).
COMMON_CURVES: Tuple[Tuple[str, bool], ...] = tuple((name, True) for name in YARDSTICK_NAMES) + (
    ("coord_acc", True), ("coord_bin_err", False))


def ordered_boxes(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) with each pair sorted, so that ``x1 <= x2`` and ``y1 <= y2``."""
    x = torch.stack([boxes[..., 0], boxes[..., 2]], dim=-1)
    y = torch.stack([boxes[..., 1], boxes[..., 3]], dim=-1)
    (x1, x2), (y1, y2) = x.sort(dim=-1).values.unbind(-1), y.sort(dim=-1).values.unbind(-1)
    return torch.stack([x1, y1, x2, y2], dim=-1)


@torch.no_grad()
def teacher_forced_ious(coord_logits: Tensor, coord_bins: Tensor, box_coords: Tensor) -> Tuple[Tensor, Tensor]:
    """IoU of the argmax box and of the CoordExp box with the target box, per box.

    ``coord_logits``: ``[n, K]`` logits of the coordinate tokens at the ``n`` coordinate slots (bin
    order); ``coord_bins``: ``[n]`` target bins; ``box_coords``: ``[m, 4]`` rows of each box's x1, y1,
    x2, y2 (``SequenceLayout.box_coords``). Returns ``(iou_argmax [m], iou_coordexp [m])``, float64.
    """
    z = coord_logits.detach().double()
    expected = expected_bins(z)                                                # [n] fractional bins
    argmax = argmax_bins(z).to(z.dtype)                                        # [n]
    target = dequantize_bins(coord_bins.to(z.dtype))[box_coords]               # [m, 4]
    iou_argmax = box_iou(ordered_boxes(dequantize_bins(argmax)[box_coords]), target)
    iou_exp = box_iou(ordered_boxes(dequantize_bins(expected)[box_coords]), target)
    return iou_argmax, iou_exp


@torch.no_grad()
def yardstick_metrics(coord_logits: Tensor, coord_bins: Tensor, box_coords: Tensor) -> Metrics:
    """Every yardstick of one micro-batch as ``name -> (sum, count)`` over its boxes (``core.loss_metrics``).

    Mean over an interval = sum of sums / sum of counts (how ``swift_ext.loss`` accumulates them), so a
    batch without boxes adds nothing. Inputs as in ``teacher_forced_ious``.
    """
    ious = teacher_forced_ious(coord_logits, coord_bins, box_coords)
    m = box_coords.shape[0]
    out: Metrics = {}
    for decode, iou in zip(_DECODES, ious):
        out[f"box_iou_{decode}"] = metric_entry(iou, m)
        for t, suffix in zip(IOU_THRESHOLDS, _AT):
            out[f"box_iou_{decode}{suffix}"] = metric_entry(iou >= t, m)
    return out


def yardstick_sums(coord_logits: Tensor, coord_bins: Tensor, box_coords: Tensor) -> Tuple[Tensor, Tensor]:
    """``yardstick_metrics`` packed: sums and counts ``([6], [6])`` float64 in ``YARDSTICK_NAMES`` order."""
    return stack_metrics(yardstick_metrics(coord_logits, coord_bins, box_coords), YARDSTICK_NAMES)
