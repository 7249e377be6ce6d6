"""The bin rule: normalised coordinates <-> the ``NUM_BINS`` coordinate bins (no ms-swift, no torch).

API: ``NUM_BINS``, ``quantize`` / ``dequantize`` (and ``_box`` forms), ``widen_bins``, ``is_narrow``,
``target_bins`` (the bins a target is written with), ``normalize_box`` / ``denormalize_box`` (pixels <->
``[0, 1]``). Re-exported by ``core.codec``. Rules: docs/design/codec.md ("Bins").
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

NUM_BINS = 1000

Box = Tuple[float, float, float, float]
Bins = Tuple[int, int, int, int]


def quantize(c: float) -> int:
    """Normalised coordinate -> bin index (round half up, clamp to 0..NUM_BINS-1)."""
    c = float(c)
    if math.isnan(c):
        raise ValueError("cannot quantise NaN")
    k = math.floor(c * NUM_BINS + 0.5)
    return min(max(k, 0), NUM_BINS - 1)


def dequantize(k: float) -> float:
    """Bin index (possibly fractional, e.g. an expectation) -> normalised coordinate."""
    return float(k) / NUM_BINS


def quantize_box(box: Sequence[float]) -> Bins:
    return tuple(quantize(c) for c in box)  # type: ignore[return-value]


def dequantize_box(bins: Sequence[float]) -> Box:
    return tuple(dequantize(k) for k in bins)  # type: ignore[return-value]


def widen_bins(bins: Sequence[int]) -> Bins:
    """``bins`` ``(x1, y1, x2, y2)`` with every side whose two ends share a bin widened to one bin.

    A box narrower than a bin quantises to ``x1 == x2`` (or ``y1 == y2``): a zero-area target whose IoU with
    any prediction is 0, and whose IoU-loss gradient on a thin prediction is thousands of times a normal
    box's. Such a side ``(k, k)`` becomes ``(k, k + 1)``, and ``(998, 999)`` at the last bin: the far end
    moves, so ``x1``/``y1``, which decide the object order, keep their bins (except at bin 999).
    Other sides are returned unchanged.
    """
    x1, y1, x2, y2 = (int(k) for k in bins)
    if x1 == x2:
        x1, x2 = (x1, x1 + 1) if x1 < NUM_BINS - 1 else (x1 - 1, x1)
    if y1 == y2:
        y1, y2 = (y1, y1 + 1) if y1 < NUM_BINS - 1 else (y1 - 1, y1)
    return (x1, y1, x2, y2)


def is_narrow(bbox: Sequence[float]) -> bool:
    """Whether the normalised ``bbox`` has a side narrower than a bin (both ends in one bin after
    ``quantize``); ``target_bins`` widens such a side."""
    k = quantize_box(bbox)
    return k[0] == k[2] or k[1] == k[3]


def target_bins(bbox: Sequence[float]) -> Bins:
    """The bins a target box is written with: ``quantize_box``, then ``widen_bins`` (no side of zero extent).
    The template, the dataset preprocessor and ``DetObject.bins`` use this; evaluation never does (it scores
    against the ground truth in pixels)."""
    return widen_bins(quantize_box(bbox))


def normalize_box(xyxy_pixels: Sequence[float], width: float, height: float, clip: bool = True) -> Box:
    """Absolute pixel ``[x1, y1, x2, y2]`` -> normalised ``[0, 1]`` box (clipped by default)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = (float(v) for v in xyxy_pixels)
    box = (x1 / width, y1 / height, x2 / width, y2 / height)
    if clip:
        box = tuple(min(max(v, 0.0), 1.0) for v in box)  # type: ignore[assignment]
    return box


def denormalize_box(box: Sequence[float], width: float, height: float) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * width, y1 * height, x2 * width, y2 * height)
