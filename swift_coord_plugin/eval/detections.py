"""From parsed objects to COCO detections: box decoding, confidence scores, pixels (no ms-swift import).

Public: ``DECODES``, ``SCORES``, ``SCORE_FORMULAS``, ``DECODE_FORMULAS``, ``DecodeStats``, ``decode_bins``,
``object_score``, ``spread_score``, ``coco_bbox``. Design notes: ``docs/design/eval_detections.md``.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from ..core import codec
from .results import PredictedObject, expectation_and_mass
from .slots import RowSlots

DECODES = ("argmax", "coordexp")
SCORES = ("logprob", "logprob_desc", "constant", "spread")

SCORE_FORMULAS = {
    "logprob": "exp(mean log-probability of the 4 coordinate tokens)",
    "logprob_desc": "exp(mean log-probability of the 4 coordinate tokens and the description tokens)",
    "constant": "1.0 for every object (COCOeval ranks an image's objects in generation order)",
    "spread": "1 / (1 + mean over the 4 coordinate slots of the standard deviation, in bins, of the restricted "
              "distribution over all 1000 bins; from the slots file)",
}
DECODE_FORMULAS = {
    "argmax": "generated coordinate token k -> k/1000",
    "coordexp": "sum_k p_k * k / 1000 over the coordinate tokens in top_logprobs, p renormalised over them",
    "coordexp_exact": "sum_k p_k * k / 1000 over all 1000 coordinate tokens (the slots file written at inference)",
}


@dataclass
class DecodeStats:
    """What coordexp saw: how many of each position's top-k were coordinate tokens, and the repairs."""

    positions: int = 0
    exact_positions: int = 0  # of those: read from the slots file (all 1000 bins)
    top_k_max: int = 0
    coord_in_top_k: Counter = field(default_factory=Counter)  # n coordinate tokens -> positions
    coord_mass_sum: float = 0.0
    no_coord_in_top_k: int = 0
    only_minus_infinity: int = 0  # of those: coordinates listed, every one with log-probability -inf
    swapped_pairs: int = 0

    def as_dict(self) -> dict:
        n = self.positions - self.exact_positions  # the positions read from the top k
        hist = {str(k): v for k, v in sorted(self.coord_in_top_k.items())}
        mean_in = sum(k * v for k, v in self.coord_in_top_k.items()) / n if n else None
        return {
            "coordinate_positions": self.positions,
            "exact_positions": self.exact_positions,
            "top_k": self.top_k_max,
            "mean_coordinate_tokens_in_top_k": mean_in,
            "min_coordinate_tokens_in_top_k": min(self.coord_in_top_k) if n else None,
            "positions_by_coordinate_tokens_in_top_k": hist,
            "mean_coordinate_probability_in_top_k": self.coord_mass_sum / n if n else None,
            "positions_without_coordinate_in_top_k": self.no_coord_in_top_k,
            "positions_with_only_minus_infinity_logprobs": self.only_minus_infinity,
            "swapped_pairs": self.swapped_pairs,
        }


def decode_bins(obj: PredictedObject, method: str, stats: Optional[DecodeStats] = None,
                slots: Optional[RowSlots] = None, where: str = "") -> Tuple[float, ...]:
    """The object's ``(x1, y1, x2, y2)`` in bin units (fractional for coordexp).

    ``slots``: the row's line of the slots file; coordexp then reads the exact ``E[k]`` of each coordinate
    token from it (``SlotsError`` naming ``where`` when a token does not match it) instead of the top-k."""
    if method == "argmax":
        return tuple(float(k) for k in obj.bins)
    if method != "coordexp":
        raise ValueError(f"unknown decode method {method!r}; expected one of {DECODES}")
    if obj.coords is None:
        raise ValueError("coordexp needs per-token top_logprobs")
    out: List[float] = []
    if slots is not None:
        for tok in obj.coords:
            out.append(slots.at(tok.index, tok.bin, where)[0])
        if stats is not None:
            stats.positions += 4
            stats.exact_positions += 4
        return _ordered(out, stats)
    for tok in obj.coords:
        if tok.top is None:
            raise ValueError("coordexp needs per-token top_logprobs")
        e, mass = expectation_and_mass(tok.top)
        if stats is not None:
            stats.positions += 1
            if tok.top_k > stats.top_k_max:
                stats.top_k_max = tok.top_k
            stats.coord_in_top_k[len(tok.top)] += 1
            stats.coord_mass_sum += mass
            if e is None:
                stats.no_coord_in_top_k += 1
                stats.only_minus_infinity += bool(tok.top)
        out.append(float(tok.bin) if e is None else e)
    return _ordered(out, stats)


def _ordered(out: List[float], stats: Optional[DecodeStats]) -> Tuple[float, ...]:
    for lo, hi in ((0, 2), (1, 3)):
        if out[hi] < out[lo]:
            out[lo], out[hi] = out[hi], out[lo]
            if stats is not None:
                stats.swapped_pairs += 1
    return tuple(out)


def object_score(obj: PredictedObject, method: str) -> float:
    if method == "constant":
        return 1.0
    if obj.coords is None:
        raise ValueError(f"score {method!r} needs per-token logprobs")
    lps = [t.logprob for t in obj.coords]
    if method == "logprob_desc":
        lps += list(obj.desc_logprobs)
    elif method != "logprob":
        raise ValueError(f"unknown score {method!r}; expected one of {SCORES}")
    return math.exp(sum(lps) / len(lps))


def spread_score(obj: PredictedObject, slots: RowSlots, where: str = "") -> float:
    """The ``spread`` score: ``1 / (1 + mean std)`` over the object's 4 coordinate slots, std in bins, in (0, 1]."""
    if obj.coords is None:
        raise ValueError("score 'spread' needs per-token logprobs (the positions of the coordinate tokens)")
    stds = [slots.at(tok.index, tok.bin, where)[1] for tok in obj.coords]
    return 1.0 / (1.0 + sum(stds) / len(stds))


def coco_bbox(bins: Sequence[float], width: float, height: float) -> List[float]:
    """Bins (x1, y1, x2, y2) -> absolute pixel ``[x, y, w, h]``."""
    x1, y1, x2, y2 = codec.denormalize_box(codec.dequantize_box(bins), width, height)
    return [x1, y1, x2 - x1, y2 - y1]
