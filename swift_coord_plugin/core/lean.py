"""The lean loss path as tensor functions: cross-entropy and coordinate logits straight from the final
hidden states and the LM head weight, never holding ``[tokens, vocab]`` logits (no ms-swift import).

Public: ``DEFAULT_CHUNK_ELEMENTS``, ``default_chunk_rows``, ``linear_ce_and_coord_logits``. Design notes:
``docs/design/core_lean.md``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .label_parser import IGNORE_INDEX

# Elements of one chunk of logits (float32: 512 MiB); chunk rows = this // vocab size (878 for 152,704).
DEFAULT_CHUNK_ELEMENTS = 1 << 27


def default_chunk_rows(vocab_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    return max(16, chunk_elements // max(int(vocab_size), 1))


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _add_matmul_(out: Tensor, a: Tensor, b: Tensor) -> None:
    """``out += a @ b`` without a full-size temporary when the dtypes agree."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    else:
        out.add_(a @ b)


class _LinearCEAndCoordLogits(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, token_weight: Tensor, rows: Tensor,
                coord_start: int, num_bins: int, chunk: int, mm_dtype: Optional[torch.dtype], grad_enabled: bool,
                want_preds: bool):
        N = hidden.shape[0]
        cdt = _compute_dtype(hidden)
        mm = mm_dtype or hidden.dtype
        h = hidden if hidden.dtype == mm else hidden.to(mm)
        w = weight if weight.dtype == mm else weight.to(mm)
        need_h = grad_enabled and ctx.needs_input_grad[0]
        need_w = grad_enabled and ctx.needs_input_grad[1]

        ce = torch.zeros(N, dtype=cdt, device=hidden.device)
        preds = torch.zeros(N if want_preds else 0, dtype=torch.long, device=hidden.device)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        tw = token_weight.to(cdt)
        labelled = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        for start in range(0, labelled.numel(), chunk):
            idx = labelled[start:start + chunk]
            hc = h.index_select(0, idx)
            z = hc @ w.t()
            if z.dtype != cdt:
                z = z.to(cdt)
            t = targets.index_select(0, idx).unsqueeze(1)
            z_t = z.gather(1, t).squeeze(1)
            z_max, arg = z.max(dim=1)
            if want_preds:
                preds.index_copy_(0, idx, arg)
            # Log-sum-exp and softmax in place on z: no second [chunk, vocab] buffer.
            z.sub_(z_max.unsqueeze(1)).exp_()
            total = z.sum(dim=1)
            ce.index_copy_(0, idx, z_max + total.log() - z_t)
            if need_h or need_w:
                wc = tw.index_select(0, idx).unsqueeze(1)
                # d(sum_t w_t CE_t)/dz = w * (softmax(z) - onehot(t)).
                z.mul_(wc / total.unsqueeze(1))
                z.scatter_add_(1, t, -wc)
                g = z if z.dtype == mm else z.to(mm)
                del z
                if need_h:
                    grad_h.index_copy_(0, idx, (g @ w).to(hidden.dtype))
                if need_w:
                    _add_matmul_(grad_w, g.t(), hc)
            del hc
        loss = (ce * tw).sum()

        # Coordinate logits from the coordinate rows of the head only.
        h_rows = h.index_select(0, rows)
        w_coord = w[coord_start:coord_start + num_bins]
        coord_logits = (h_rows @ w_coord.t()).to(cdt)

        ctx.mark_non_differentiable(ce, preds)
        ctx.save_for_backward(weight, h_rows, rows)
        ctx.grads = (grad_h, grad_w)
        ctx.hidden_meta = (hidden.shape, hidden.dtype, mm)
        ctx.coord_slice = (coord_start, coord_start + num_bins)
        return loss, ce, coord_logits, preds

    @staticmethod
    def backward(ctx, grad_loss, grad_ce, grad_coord, grad_preds):
        weight, h_rows, rows = ctx.saved_tensors
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        shape, h_dtype, mm = ctx.hidden_meta
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_loss is None:
            grad_h = grad_h.zero_() if grad_h is not None else None
            grad_w = grad_w.zero_() if grad_w is not None else None
        elif not bool(grad_loss == 1):  # one sync; the trainer's scale is usually 1
            for gr in (grad_h, grad_w):
                if gr is not None:
                    gr.mul_(grad_loss.to(gr.dtype))
        if grad_coord is not None and rows.numel() > 0:
            lo, hi = ctx.coord_slice
            gc = grad_coord.to(mm)
            if need_h:
                if grad_h is None:
                    grad_h = torch.zeros(shape, dtype=h_dtype, device=gc.device)
                w_coord = weight[lo:hi]
                w_coord = w_coord if w_coord.dtype == mm else w_coord.to(mm)
                grad_h.index_add_(0, rows, (gc @ w_coord).to(h_dtype))
            if need_w:
                if grad_w is None:
                    grad_w = torch.zeros_like(weight)
                _add_matmul_(grad_w[lo:hi], gc.t(), h_rows)
        return grad_h, grad_w, None, None, None, None, None, None, None, None, None


def linear_ce_and_coord_logits(hidden: Tensor, weight: Tensor, targets: Tensor, token_weight: Tensor,
                               rows: Tensor, coord_start: int, num_bins: int, *, chunk_rows: Optional[int] = None,
                               mm_dtype: Optional[torch.dtype] = None,
                               want_preds: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``hidden [N, H]``, ``weight [V, H]`` (the LM head, bias-free), ``targets [N]`` (``-100`` ignored),
    ``token_weight [N]``, ``rows [n]`` -> ``(loss, ce [N], coord_logits [n, num_bins], preds [N] or [0])``.

    ``mm_dtype``: the dtype of the head matmul (default ``hidden``'s; a weight of another dtype is cast
    once, as autocast would). Values are float32 (float64 for float64 hidden states). The backward may
    run once (the saved gradients are consumed).
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and head weight {tuple(weight.shape)} do not match: "
                         "expected [tokens, hidden] and [vocab, hidden]")
    if targets.shape != hidden.shape[:1] or token_weight.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} / token_weight {tuple(token_weight.shape)} do not match "
                         f"{hidden.shape[0]} hidden rows")
    if coord_start < 0 or coord_start + num_bins > weight.shape[0]:
        raise ValueError(f"coordinate ids {coord_start}..{coord_start + num_bins - 1} do not fit a head of "
                         f"{weight.shape[0]} rows")
    chunk = int(chunk_rows) if chunk_rows else default_chunk_rows(weight.shape[0])
    return _LinearCEAndCoordLogits.apply(hidden, weight, targets, token_weight, rows, int(coord_start), int(num_bins),
                                         chunk, mm_dtype, torch.is_grad_enabled(), bool(want_preds))
