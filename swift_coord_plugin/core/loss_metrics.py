"""Logged metrics as ``name -> (sum, count)``: the loss's catalogue and the one step that packs them.

A term logs its metrics where it is computed, as entries ``name -> (sum, count)`` (0-dim float64 tensors
on the loss's device, detached: ``metric_entry``); ``stack_metrics`` packs a set of them into the two
vectors the trainer glue accumulates on the device (``swift_ext.loss``; the yardsticks of
``core.yardsticks`` go the same way). Public API: ``METRICS`` / ``METRIC_NAMES`` (the catalogue, in
logging order), ``logged_metric_names``, ``Metrics``, ``metric_entry``, ``stack_metrics``, ``metric_values``.
The keys and what they mean: docs/losses.md, "Logged components".
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import torch
from torch import Tensor

from .loss_config import LossConfig

# name -> (sum, count): 0-dim float64 tensors, detached, on one device.
Metrics = Dict[str, Tuple[Tensor, Tensor]]

# Logged components: (name, kind), in logging order. "mean" = sum / count over the logging interval;
# "sum" = total. A new metric is a row here and an entry where its term is computed (``core.losses``).
METRICS: Tuple[Tuple[str, str], ...] = (
    ("text_loss", "mean"),           # CE per text token
    ("coord_ce_loss", "mean"),       # CE per coordinate token
    ("coord_loss", "mean"),          # G per box: alpha * L1 (+ beta * (1 - IoU variant) with use_geom_loss)
    ("coord_l1_loss", "mean"),       # ||b_hat - b||_1 per box
    ("coord_giou_loss", "mean"),     # 1 - GIoU per box
    ("gate_loss", "mean"),           # -log coordinate mass per coordinate token
    ("coord_acc", "mean"),           # restricted argmax == target, per coordinate token
    ("coord_bin_err", "mean"),       # |expected bin - target bin| in bins, per coordinate token
    ("coord_mass", "mean"),          # full-softmax probability on the coordinate tokens
    ("incomplete_objects", "sum"),   # objects that gave no box (counted, geometric term skipped)
    # The switches' terms, logged when switched on (``logged_metric_names``).
    ("coord_box_loss", "mean"),      # 1 - IoU variant per box (box_loss != giou)
    ("coord_soft_ce_loss", "mean"),  # Gaussian soft-label CE per coordinate token
    ("coord_w1_loss", "mean"),       # Wasserstein-1 per coordinate token, image fractions
    ("coord_box_order_loss", "mean"),  # max(x1 - x2, 0) + max(y1 - y2, 0) per box
)
METRIC_NAMES = tuple(name for name, _ in METRICS)


def logged_metric_names(config: LossConfig) -> Tuple[str, ...]:
    """The components a run logs: every one of the groups, plus those of the switches that are on."""
    on = {
        "gate_loss": config.trains_gate,
        "coord_box_loss": config.box_loss != "giou",
        "coord_soft_ce_loss": config.lambda_soft_ce > 0,
        "coord_w1_loss": config.lambda_w1 > 0,
        "coord_box_order_loss": config.lambda_box_order > 0,
    }
    return tuple(name for name in METRIC_NAMES if on.get(name, True))


@torch.no_grad()
def metric_entry(values: Tensor, count: Union[Tensor, int, float]) -> Tuple[Tensor, Tensor]:
    """``(sum, count)`` of one metric: ``values`` (any shape, any float or bool dtype) summed in float64,
    ``count`` (a number or a 0-dim tensor) as a 0-dim float64 tensor on the same device. No host sync."""
    s = values.detach().to(torch.float64).sum()
    if torch.is_tensor(count):
        c = count.detach().to(device=s.device, dtype=torch.float64)
    else:
        c = torch.full((), float(count), dtype=torch.float64, device=s.device)
    return s, c


def stack_metrics(metrics: Metrics, names: Sequence[str]) -> Tuple[Tensor, Tensor]:
    """``(sums [k], counts [k])`` float64 of ``names`` (``k = len(names)``) in that order: what the trainer
    glue accumulates. ``KeyError`` naming the metrics ``metrics`` lacks. No host sync."""
    missing = [n for n in names if n not in metrics]
    if missing:
        raise KeyError(f"no entry for the metric(s) {missing}; entries: {sorted(metrics)}")
    sums = torch.stack([metrics[n][0] for n in names])
    counts = torch.stack([metrics[n][1] for n in names])
    return sums, counts


def metric_values(metrics: Metrics, catalogue: Sequence[Tuple[str, str]]) -> Dict[str, Tensor]:
    """The value of each ``(name, kind)`` of ``catalogue``, in its order, as 0-dim tensors: ``sum / count``
    (0 when the count is 0) for a "mean", the sum for a "sum". ``KeyError`` for a name without an entry."""
    out = {}
    for name, kind in catalogue:
        s, c = metrics[name]
        out[name] = s if kind == "sum" else s / c.clamp(min=1)
    return out
