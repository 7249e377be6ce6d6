"""The loss's per-token and per-box terms, before any weighting or normalisation.

Part (a), ``token_ce_and_coord_logits``: the full-vocabulary cross-entropy per token and the coordinate
logits ``[n, num_bins]`` of the coordinate positions, sharing one logits-sized gradient buffer. Part (b),
``coord_terms`` -> ``CoordTerms``: every coordinate term from ``[n, num_bins]`` logits of any source
(CoordExp box, L1, the IoU variants, gate, ``soft_label_ce``, ``wasserstein1_to_bin``, box order), with
``gaussian_soft_labels`` and ``zero_area_targets``. Formulas: docs/losses.md, "The loss" and "Switches".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .codec import NUM_BINS
from .coordexp import bin_expectation, dequantize_bins, restricted_softmax
from .geometry import DEFAULT_EPS, box_l1, box_loss, box_order_penalty, giou_loss, match_boxes
from .label_parser import IGNORE_INDEX


# ---------------------------------------------------------------------------------------------- (a)
class _TokenCEAndCoordLogits(torch.autograd.Function):
    """Per-token cross-entropy over the full vocabulary and the coordinate logits of some rows.

    Forward and backward use the same kernels as ``F.cross_entropy(reduction='none')`` on
    ``logits.float()`` (so the values and gradients equal ms-swift's stock loss, bit for bit), and the
    gradient of the coordinate logits is added in place into that same logits-sized buffer: one buffer
    for all terms instead of one per gather. With ``reuse_buffer`` that buffer is the saved log-softmax
    itself (the softmax backward reads and writes each element once, so it can write over its input):
    the backward then holds two ``[tokens, vocab]`` float32 buffers where the stock loss holds three,
    and a second backward through the same graph fails loudly (the saved tensor was modified in place).
    """

    @staticmethod
    def forward(ctx, logits2d: Tensor, targets: Tensor, rows: Tensor, coord_start: int, num_bins: int,
                reuse_buffer: bool):
        ctx.set_materialize_grads(False)
        x = logits2d.double() if logits2d.dtype == torch.float64 else logits2d.float()
        logp = torch.log_softmax(x, dim=-1)
        ce, total_weight = torch.ops.aten.nll_loss_forward(logp, targets, None, 0, IGNORE_INDEX)
        coord_logits = x[:, coord_start:coord_start + num_bins][rows]
        ctx.save_for_backward(logp, targets, rows, total_weight)
        ctx.in_dtype = logits2d.dtype
        ctx.coord_slice = (coord_start, coord_start + num_bins)
        ctx.reuse_buffer = reuse_buffer
        return ce, coord_logits

    @staticmethod
    def backward(ctx, grad_ce: Optional[Tensor], grad_coord: Optional[Tensor]):
        logp, targets, rows, total_weight = ctx.saved_tensors
        grad = None
        if grad_ce is not None:
            grad_logp = torch.ops.aten.nll_loss_backward(grad_ce, logp, targets, None, 0, IGNORE_INDEX, total_weight)
            if ctx.reuse_buffer:
                grad = torch.ops.aten._log_softmax_backward_data.out(grad_logp, logp, 1, logp.dtype, out=logp)
            else:
                grad = torch.ops.aten._log_softmax_backward_data(grad_logp, logp, 1, logp.dtype)
            del grad_logp
        if grad_coord is not None and rows.numel() > 0:
            if grad is None:
                grad = logp.zero_() if ctx.reuse_buffer else torch.zeros_like(logp)
            lo, hi = ctx.coord_slice
            grad[:, lo:hi].index_add_(0, rows, grad_coord.to(grad.dtype))
        if grad is not None:
            grad = grad.to(ctx.in_dtype)
        return grad, None, None, None, None, None


def token_ce_and_coord_logits(logits2d: Tensor, targets: Tensor, rows: Tensor, coord_start: int,
                              num_bins: int, reuse_buffer: bool = False) -> Tuple[Tensor, Tensor]:
    """Part (a): ``logits2d [N, V]``, ``targets [N]`` (``-100`` ignored), ``rows [n]`` ->
    (per-token CE ``[N]``, coordinate logits ``[n, num_bins]``), both float32 (float64 for float64 input).
    ``reuse_buffer``: the backward writes the gradient over the saved log-softmax (one full buffer less;
    the graph can then be back-propagated once only, as in training).
    """
    return _TokenCEAndCoordLogits.apply(logits2d, targets, rows, coord_start, num_bins, reuse_buffer)


# ---------------------------------------------------------------------------------------------- (b)
@dataclass
class CoordTerms:
    """Per coordinate token (``[n]``) and per box (``[m]``) quantities from the coordinate logits."""

    expected_bins: Tensor  # [n] sum_k p_k k
    gate: Tensor           # [n] -log(coordinate mass); zeros if ce_at_coord was not given
    correct: Tensor        # [n] bool, restricted argmax == target
    l1: Tensor             # [m] ||b_hat - b||_1
    giou_loss: Tensor      # [m] 1 - GIoU
    box_loss: Tensor       # [m] 1 - IoU variant of ``box_loss`` (the same tensor as giou_loss for giou)
    soft_ce: Optional[Tensor] = None    # [n] Gaussian soft-label CE, when asked for
    w1: Optional[Tensor] = None         # [n] Wasserstein-1 to the target bin (image fractions), when asked for
    box_order: Optional[Tensor] = None  # [m] max(x1 - x2, 0) + max(y1 - y2, 0), when asked for


def gaussian_soft_labels(bins: Tensor, num_bins: int, sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Soft targets ``[n, num_bins]``: ``q_k = exp(-(k - b)^2 / (2 sigma^2)) / Z`` for each target bin ``b``.

    ``sigma`` in bins; ``Z`` normalises over the bins (the Gaussian is truncated at bins 0 and
    ``num_bins - 1``, so each row sums to 1).
    """
    k = torch.arange(num_bins, device=bins.device, dtype=dtype)
    d = k.unsqueeze(0) - bins.to(dtype).unsqueeze(-1)
    return torch.softmax(-(d * d) / (2.0 * sigma * sigma), dim=-1)


def soft_label_ce(log_probs: Tensor, bins: Tensor, sigma: float) -> Tensor:
    """``-sum_k q_k log p_k`` per row: ``log_probs [n, K]`` (restricted log-softmax), ``bins [n]`` -> ``[n]``.

    ``q`` is ``gaussian_soft_labels(bins, K, sigma)``. Its minimum over ``p`` is the entropy of ``q``,
    not 0 (reached at ``p = q``).
    """
    q = gaussian_soft_labels(bins, log_probs.shape[-1], sigma, log_probs.dtype)
    return -(q * log_probs).sum(dim=-1)


def wasserstein1_to_bin(probs: Tensor, bins: Tensor, num_bins: int = NUM_BINS) -> Tensor:
    """1-D Wasserstein distance between ``probs [n, K]`` over the bins and a point mass at ``bins [n]``.

    ``sum_k p_k |k - b| / num_bins`` -> ``[n]``, image fractions. For a point mass this is the
    ranked-probability form ``sum_k |F_p(k) - [k >= b]| / num_bins`` (CDF difference; Vallender 1974).
    """
    k = torch.arange(probs.shape[-1], device=probs.device, dtype=probs.dtype)
    dist = (k.unsqueeze(0) - bins.to(probs.dtype).unsqueeze(-1)).abs()
    return (probs * dist).sum(dim=-1) / num_bins


def zero_area_targets(target: Tensor) -> Tensor:
    """``BoolTensor[m]``: target boxes ``[m, 4]`` (image fractions) with ``x2 <= x1`` or ``y2 <= y1``."""
    return (target[..., 2] <= target[..., 0]) | (target[..., 3] <= target[..., 1])


def coord_terms(coord_logits: Tensor, coord_bins: Tensor, box_coords: Tensor,
                ce_at_coord: Optional[Tensor] = None, eps: float = DEFAULT_EPS, *, box_loss_name: str = "giou",
                soft_ce_sigma: Optional[float] = None, want_w1: bool = False,
                want_box_order: bool = False) -> CoordTerms:
    """Part (b): from coordinate logits ``[n, K]`` of any source (gathered logits, or a head restricted to
    the coordinate rows), target bins ``[n]`` and boxes ``[m, 4]`` (indices into the ``n`` rows). A target
    box without area (``zero_area_targets``) gets a zero IoU-variant loss (``giou_loss``, ``box_loss``): L1 only.

    ``ce_at_coord [n]``, the full-vocabulary CE of the same rows, gives the full log-sum-exp without a
    second pass over the vocabulary (``lse = CE + z_target``, the target being a coordinate token), from
    which the coordinate mass and the gate term follow. Differentiable in ``coord_logits`` and
    ``ce_at_coord``. ``box_loss_name``: the IoU variant of ``box_loss`` (``geometry.BOX_LOSSES``);
    ``soft_ce_sigma`` (bins), ``want_w1``, ``want_box_order``: also compute those terms. Predicted and
    target boxes are paired by ``geometry.match_boxes``. Everything works on the ``[n, K]`` rows: no
    full-vocabulary pass.
    """
    probs, lse_c = restricted_softmax(coord_logits)                      # [n, K], [n]
    z = coord_logits.to(probs.dtype)
    e_bins = bin_expectation(probs)                                       # [n]
    pred = dequantize_bins(e_bins)[box_coords]                            # [m, 4]
    target = dequantize_bins(coord_bins.to(z.dtype))[box_coords]          # [m, 4]
    pred_idx, target_idx = match_boxes(pred, target)
    pred, target = pred[pred_idx], target[target_idx]
    l1 = box_l1(pred, target)
    gl = giou_loss(pred, target, eps=eps)
    bl = gl if box_loss_name == "giou" else box_loss(box_loss_name, pred, target, eps=eps)
    # A target without area (x1 == x2 or y1 == y2 in bins) has IoU 0 whatever the prediction, and gives a
    # thin prediction a huge gradient: such a box gets L1 only. The data path widens such boxes to one bin
    # (``codec.target_bins``), so this only guards targets written some other way.
    # (A mask on [m] values, no host sync.)
    flat = zero_area_targets(target)
    gl = gl.masked_fill(flat, 0.0)
    bl = gl if box_loss_name == "giou" else bl.masked_fill(flat, 0.0)
    soft = w1 = order = None
    if soft_ce_sigma is not None:
        soft = soft_label_ce(z - lse_c.unsqueeze(-1), coord_bins, soft_ce_sigma)
    if want_w1:
        w1 = wasserstein1_to_bin(probs, coord_bins, NUM_BINS)
    if want_box_order:
        order = box_order_penalty(pred)
    if ce_at_coord is not None:
        z_t = z.gather(-1, coord_bins.unsqueeze(-1)).squeeze(-1)
        gate = ce_at_coord.to(z.dtype) + z_t - lse_c                      # lse_full - lse_coord >= 0
    else:
        gate = torch.zeros_like(lse_c)
    with torch.no_grad():
        correct = z.argmax(dim=-1) == coord_bins
    return CoordTerms(expected_bins=e_bins, gate=gate, correct=correct, l1=l1, giou_loss=gl, box_loss=bl,
                      soft_ce=soft, w1=w1, box_order=order)
