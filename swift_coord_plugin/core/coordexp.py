"""CoordExp: continuous coordinates from the logits of the coordinate tokens (no ms-swift import).

At a coordinate position the model's distribution is restricted to the ``NUM_BINS`` coordinate
tokens (softmax over their logits only) and decoded either by expectation,
``c = sum_k p_k * k / NUM_BINS`` (differentiable, the "CoordExp" decode), or by argmax,
``c = k* / NUM_BINS`` (what greedy decoding constrained to coordinate tokens produces). Both use
the codec's decoding rule ``k / NUM_BINS`` (``codec.dequantize``) on tensors.

Shapes: ``coord_logits`` are ``[n, NUM_BINS]`` (any float dtype; computed in float32 or float64),
one row per coordinate position, columns in bin order. ``box_index`` is ``[m, 4]``: for each box,
the rows of its ``x1, y1, x2, y2``.

Cost: always gather the coordinate positions first and then take the ``NUM_BINS`` coordinate
columns (``coord_logits_at``); a softmax over the coordinate slice of every position of a
``[batch, seq, vocab]`` tensor is wasted work and memory.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from .codec import NUM_BINS


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def dequantize_bins(bins: Tensor) -> Tensor:
    """Tensor form of ``codec.dequantize``: bin index (integer or fractional) -> ``bins / NUM_BINS``."""
    dtype = bins.dtype if bins.is_floating_point() else torch.float32
    return bins.to(dtype) / NUM_BINS


def coord_logits_at(logits: Tensor, positions: Tensor, coord_start: int, num_bins: int = NUM_BINS) -> Tensor:
    """Rows ``positions`` of ``logits`` restricted to the coordinate columns.

    ``logits``: ``[..., vocab]`` (flattened over the leading dimensions); ``positions``: ``[n]``
    flat indices into those leading dimensions -> ``[n, num_bins]``, in the logits' dtype.
    """
    vocab = logits.shape[-1]
    if coord_start < 0 or coord_start + num_bins > vocab:
        raise ValueError(f"coordinate ids {coord_start}..{coord_start + num_bins - 1} do not fit a vocabulary of "
                         f"{vocab} logits")
    flat = logits.reshape(-1, vocab)
    # Slicing first is a view; the index then copies only [n, num_bins].
    return flat[:, coord_start:coord_start + num_bins][positions]


def restricted_softmax(coord_logits: Tensor) -> Tuple[Tensor, Tensor]:
    """Softmax over the coordinate tokens only, with its log-normaliser: ``[n, K]`` -> ``(probs [n, K],
    lse [n])``, ``probs = exp(z - lse)`` (float32, or float64 for float64 input; differentiable).

    The one restricted softmax of the package: the loss (``loss_terms.coord_terms``), the yardsticks, the
    grammar's CoordExp decision and the slot recorder all read the distribution from here. ``z - lse`` is its
    log-probabilities.
    """
    z = coord_logits.to(_compute_dtype(coord_logits))
    lse = torch.logsumexp(z, dim=-1)
    return torch.exp(z - lse.unsqueeze(-1)), lse


def coord_probs(coord_logits: Tensor) -> Tensor:
    """Softmax over the coordinate tokens only: ``[n, K]`` -> ``[n, K]`` (``restricted_softmax``'s probabilities)."""
    return restricted_softmax(coord_logits)[0]


def bin_expectation(probs: Tensor) -> Tensor:
    """Expected bin index ``E[k] = sum_k p_k * k`` of a distribution over the bins: ``[n, K]`` -> ``[n]``
    (fractional bins, the probabilities' dtype)."""
    k = torch.arange(probs.shape[-1], device=probs.device, dtype=probs.dtype)
    return probs @ k


def expected_bins(coord_logits: Tensor) -> Tensor:
    """Expected bin index ``sum_k p_k * k`` (fractional) of the restricted softmax: ``[n, K]`` -> ``[n]``."""
    return bin_expectation(coord_probs(coord_logits))


def expected_bins_and_spread(coord_logits: Tensor) -> Tuple[Tensor, Tensor]:
    """Expected bin ``E[k] = sum_k p_k * k`` and the standard deviation ``sqrt(E[k^2] - E[k]^2)`` of the
    restricted distribution, both in bins: ``[n, K]`` -> ``([n], [n])`` (float32, or float64 for float64 input).

    Log-probabilities over the coordinate tokens are valid input too (their softmax is the same distribution).
    """
    probs = coord_probs(coord_logits)
    k = torch.arange(probs.shape[-1], device=probs.device, dtype=probs.dtype)
    mean = probs @ k
    var = (probs @ (k * k) - mean * mean).clamp_min(0)
    return mean, var.sqrt()


def expected_coords(coord_logits: Tensor) -> Tensor:
    """CoordExp decode ``sum_k p_k * k / NUM_BINS``: ``[n, K]`` -> ``[n]`` in ``[0, (K - 1) / NUM_BINS]``."""
    return dequantize_bins(expected_bins(coord_logits))


def round_half_up(x: Tensor) -> Tensor:
    """The codec's rounding (``floor(x + 0.5)``) on a tensor of fractional bins -> int64."""
    return torch.floor(x + 0.5).to(torch.int64)


def decide_bins(coord_logits: Tensor) -> Tensor:
    """The CoordExp decision of ``coordexp`` decoding: ``round(sum_k p_k * k)`` (halves up, the codec's bin rule)
    under the restricted softmax, clamped to the bins: ``[n, K]`` -> ``[n]`` int64 in ``0..K-1``."""
    return round_half_up(expected_bins(coord_logits)).clamp(0, coord_logits.shape[-1] - 1)


def argmax_bins(coord_logits: Tensor) -> Tensor:
    """Most likely coordinate bin (restricted to coordinate tokens): ``[n, K]`` -> ``[n]`` int64."""
    return coord_logits.argmax(dim=-1)


def argmax_coords(coord_logits: Tensor) -> Tensor:
    """Argmax decode ``k* / NUM_BINS``: ``[n, K]`` -> ``[n]`` float32."""
    return dequantize_bins(argmax_bins(coord_logits))


def _boxes(values: Tensor, box_index: Tensor) -> Tensor:
    if box_index.ndim != 2 or box_index.shape[-1] != 4:
        raise ValueError(f"box_index must be [m, 4] (rows of x1, y1, x2, y2), got {tuple(box_index.shape)}")
    return values[box_index]


def expected_boxes(coord_logits: Tensor, box_index: Tensor) -> Tensor:
    """CoordExp boxes: ``coord_logits [n, K]``, ``box_index [m, 4]`` -> ``[m, 4]`` (x1, y1, x2, y2)."""
    return _boxes(expected_coords(coord_logits), box_index)


def argmax_boxes(coord_logits: Tensor, box_index: Tensor) -> Tensor:
    """Argmax boxes: ``coord_logits [n, K]``, ``box_index [m, 4]`` -> ``[m, 4]``."""
    return _boxes(argmax_coords(coord_logits), box_index)


class CoordExp(nn.Module):
    """Logits ``[batch, seq, vocab]`` + the 4 coordinate positions of each object -> boxes.

    ``box_positions`` is ``[m, 4]`` of flat indices into ``batch * seq`` (row ``b``, position
    ``t`` -> ``b * seq + t``), e.g. ``SequenceLayout.box_positions`` of the label parser. Only
    those ``4 m`` rows are read, and only their coordinate columns.
    """

    def __init__(self, coord_start: int, num_bins: int = NUM_BINS):
        super().__init__()
        self.coord_start = int(coord_start)
        self.num_bins = int(num_bins)

    def coord_logits(self, logits: Tensor, box_positions: Tensor) -> Tensor:
        """``[m, 4, num_bins]`` coordinate logits of each box's coordinates."""
        flat_pos = box_positions.reshape(-1)
        rows = coord_logits_at(logits, flat_pos, self.coord_start, self.num_bins)
        return rows.reshape(*box_positions.shape, self.num_bins)

    def forward(self, logits: Tensor, box_positions: Tensor) -> Tensor:
        """Expected boxes ``[m, 4]`` (differentiable)."""
        return expected_coords(self.coord_logits(logits, box_positions).flatten(0, -2)).reshape(box_positions.shape)

    @torch.no_grad()
    def decode_argmax(self, logits: Tensor, box_positions: Tensor) -> Tensor:
        """Argmax boxes ``[m, 4]``."""
        return argmax_coords(self.coord_logits(logits, box_positions).flatten(0, -2)).reshape(box_positions.shape)

    def extra_repr(self) -> str:
        return f"coord_start={self.coord_start}, num_bins={self.num_bins}"


def coord_mass_log(coord_logits: Tensor, full_lse: Tensor) -> Tensor:
    """Log of the probability mass the full softmax puts on the coordinate tokens: ``[n]``.

    ``full_lse`` is the log-sum-exp of the full-vocabulary logits of the same rows, ``[n]``. When
    the row's target is a coordinate token it need not be recomputed: ``full_lse = ce + z_target``
    with ``ce`` the row's cross-entropy (see ``losses``).
    """
    return torch.logsumexp(coord_logits.to(_compute_dtype(coord_logits)), dim=-1) - full_lse

