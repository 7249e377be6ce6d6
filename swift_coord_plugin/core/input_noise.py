"""Coordinate input noise: training on slightly wrong previous coordinates (a cheap scheduled sampling).

Public API: ``noise_settings(environ)`` (``COORD_INPUT_NOISE_BINS`` / ``COORD_INPUT_NOISE_PROB``, off by default;
the glue, ``swift_ext/model.py``, passes ``environment.current()``) and ``perturb_coord_inputs``. No ms-swift import. Why and
what it measured: docs/losses.md, "Coordinate input noise".
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch
from torch import Tensor

from .codec import NUM_BINS

BINS_ENV = "COORD_INPUT_NOISE_BINS"
PROB_ENV = "COORD_INPUT_NOISE_PROB"
DEFAULT_PROB = 0.5


def noise_settings(environ: Mapping[str, str]) -> Tuple[int, float]:
    """``(max_shift in bins, prob)`` from ``environ`` (the glue passes ``environment.current()``); ``max_shift`` 0 means off.

    Raises ``ValueError`` naming the key for a value that is not an integer in 0..999 / a number in (0, 1].
    """
    raw_bins = str(environ.get(BINS_ENV, "0")).strip() or "0"
    raw_prob = str(environ.get(PROB_ENV, str(DEFAULT_PROB))).strip() or str(DEFAULT_PROB)
    try:
        max_shift = int(raw_bins)
    except ValueError:
        raise ValueError(f"{BINS_ENV}={raw_bins!r}: expected an integer number of bins (0 = off)") from None
    if not 0 <= max_shift < NUM_BINS:
        raise ValueError(f"{BINS_ENV}={max_shift}: expected 0..{NUM_BINS - 1} bins")
    try:
        prob = float(raw_prob)
    except ValueError:
        raise ValueError(f"{PROB_ENV}={raw_prob!r}: expected a probability") from None
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"{PROB_ENV}={prob}: expected a probability in (0, 1]")
    return max_shift, prob


def perturb_coord_inputs(input_ids: Tensor, coord_start: int, max_shift: int, prob: float,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """A copy of ``input_ids`` (``LongTensor[...]``, any shape) in which each coordinate token
    (ids ``coord_start .. coord_start + NUM_BINS - 1``) is, with probability ``prob``, moved by a shift drawn
    uniformly from ``{-max_shift..max_shift} \\ {0}`` bins and clamped to ``0..NUM_BINS-1``. Other tokens are
    untouched; ``max_shift`` 0 returns ``input_ids`` itself. Random draws from ``generator`` (default: torch's
    global generator, which the trainer seeds and saves with each checkpoint).
    """
    if max_shift <= 0:
        return input_ids
    k = input_ids - coord_start
    is_coord = (k >= 0) & (k < NUM_BINS)
    if not bool(is_coord.any()):
        return input_ids
    device = input_ids.device
    hit = torch.rand(input_ids.shape, generator=generator, device="cpu").to(device) < prob
    # 2*max_shift non-zero shifts: draw 0..2*max_shift-1, map the upper half to 1..max_shift.
    draw = torch.randint(0, 2 * max_shift, input_ids.shape, generator=generator, device="cpu").to(device)
    shift = torch.where(draw < max_shift, draw - max_shift, draw - max_shift + 1)
    moved = (k + shift).clamp(0, NUM_BINS - 1) + coord_start
    return torch.where(is_coord & hit, moved, input_ids)
