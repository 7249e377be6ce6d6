"""The training loss of groups A, B and C as a plain function (no ms-swift import).

``compute_loss(logits, labels, vocab, config, num_items_in_batch, loss_scale)`` follows ms-swift's loss
contract (unshifted labels, ``logits[:, t]`` predicts ``labels[:, t + 1]``, ``num_items_in_batch`` = labelled
targets over the accumulation window and all ranks) and is what the ``--loss_type coordexp_*`` classes call;
``compute_loss_from_hidden`` is the same loss from the final hidden states and the LM head (the lean path,
``core.lean``). Both return a ``LossOutput``: the loss, its parts and the logged metrics (``core.loss_metrics``).
The terms are in ``core.loss_terms``, the configuration in ``core.loss_config``; the names this module
re-exports from them are the loss's public API. Formula and conventions: docs/losses.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .lean import linear_ce_and_coord_logits
from .loss_config import (ENV_PREFIX, GROUP_OF_LOSS_TYPE, LOSS_TYPES, PRESETS, LossConfig, LossConfigError,
                          env_key)
from .loss_metrics import (METRIC_NAMES, METRICS, Metrics, logged_metric_names, metric_entry, metric_values,
                           stack_metrics)
from .loss_terms import (CoordTerms, coord_terms, gaussian_soft_labels, soft_label_ce, token_ce_and_coord_logits,
                         wasserstein1_to_bin, zero_area_targets)
from .label_parser import IGNORE_INDEX, STAT_NAMES, SequenceLayout, parse_targets, shift_labels
from .vocab import CoordVocab

__all__ = [
    # the loss
    "LossOutput", "compute_loss", "compute_loss_from_hidden",
    # core.loss_config
    "ENV_PREFIX", "GROUP_OF_LOSS_TYPE", "LOSS_TYPES", "PRESETS", "LossConfig", "LossConfigError", "env_key",
    # core.loss_metrics
    "METRICS", "METRIC_NAMES", "Metrics", "logged_metric_names",
    # core.loss_terms
    "CoordTerms", "coord_terms", "gaussian_soft_labels", "soft_label_ce", "token_ce_and_coord_logits",
    "wasserstein1_to_bin", "zero_area_targets",
]


@dataclass
class LossOutput:
    """``loss``: the scalar to back-propagate. ``terms``: its parts (detached), which add up to it.
    ``metrics``: every metric of ``METRICS`` as ``name -> (sum, count)``, 0-dim float64, detached, on the
    loss's device (``core.loss_metrics``).
    """

    loss: Tensor
    terms: Dict[str, Tensor]
    metrics: Metrics
    layout: SequenceLayout
    preds: Optional[Tensor] = None  # [B, T] full-vocabulary argmax (lean path, for ms-swift's token_acc)
    coord_logits: Optional[Tensor] = None  # [n, num_bins] detached coordinate logits (for core.yardsticks)

    def __post_init__(self) -> None:
        if self.metrics.keys() != set(METRIC_NAMES):
            raise KeyError(f"the loss's metric entries {sorted(self.metrics)} are not METRICS {sorted(METRIC_NAMES)}")

    def metric_vectors(self) -> Tuple[Tensor, Tensor]:
        """``(sums, counts)``: ``[len(METRICS)]`` float64 each, in ``METRIC_NAMES`` order."""
        return stack_metrics(self.metrics, METRIC_NAMES)

    @property
    def metric_sums(self) -> Tensor:
        return self.metric_vectors()[0]

    @property
    def metric_counts(self) -> Tensor:
        return self.metric_vectors()[1]

    def components(self) -> Dict[str, Tensor]:
        """Each metric of this batch: mean (sum / count, 0 when empty) or sum, as 0-dim tensors."""
        return metric_values(self.metrics, METRICS)


@dataclass
class _Plan:
    """What both paths know before any logit is computed: targets, layout and per-token weights."""

    targets: Tensor            # [B, T] aligned with the logits
    layout: SequenceLayout
    scale: Optional[Tensor]    # [N] ms-swift's loss_scale per target, or None
    ce_weight: Tensor          # [N] weight of each token's CE: 1 on text, coord_ce_weight on coordinates, x scale
    denom: Union[Tensor, int]


def _plan(labels: Tensor, device: torch.device, dtype: torch.dtype, vocab_size: int, vocab: CoordVocab,
          config: LossConfig, num_items_in_batch, loss_scale: Optional[Tensor]) -> _Plan:
    cs, nb = vocab.coord_start, vocab.num_bins
    if cs + nb > vocab_size:
        raise ValueError(f"coordinate ids {cs}..{cs + nb - 1} do not fit the {vocab_size} logits: the model's "
                         "vocabulary was not resized for the coordinate tokens")
    targets = shift_labels(labels.to(device))
    layout = parse_targets(targets, cs, vocab.obj_start, vocab.obj_end, nb)
    flat_t = targets.reshape(-1)
    N = flat_t.numel()
    scale = None
    if loss_scale is not None:
        if loss_scale.numel() != N:
            raise ValueError(f"loss_scale has {loss_scale.numel()} entries, expected {N} (one per target)")
        scale = loss_scale.reshape(-1).to(device=device, dtype=dtype)
    # One CE pass, split by per-token weights: 1 on text, lambda_coord_ce (or 0) on coordinates.
    weight = layout.text_mask.reshape(-1).to(dtype)
    if config.coord_ce_weight:
        is_coord = torch.zeros(N, dtype=dtype, device=device).index_fill_(0, layout.coord_pos, 1.0)
        weight = weight + is_coord * config.coord_ce_weight
    if scale is not None:
        weight = weight * scale
    denom = num_items_in_batch if num_items_in_batch is not None else (flat_t != IGNORE_INDEX).sum()
    if torch.is_tensor(denom):
        denom = denom.to(device).clamp(min=1)
    else:
        denom = max(int(denom), 1)
    return _Plan(targets=targets, layout=layout, scale=scale, ce_weight=weight, denom=denom)


def _assemble(plan: _Plan, config: LossConfig, ce: Tensor, coord_logits: Tensor, ce_loss: Tensor,
              gate_in_ce: bool, preds: Optional[Tensor] = None) -> LossOutput:
    """The coordinate terms and every metric on top of the CE part.

    ``ce_loss``: the differentiable CE term. ``gate_in_ce``: the CE part of the gate term (``lambda_gate *
    s_t * CE_t`` at coordinate tokens) is already in ``ce_loss`` (lean path, where ``ce`` itself carries no
    gradient), so only the rest of the gate term is added here. Each term logs its metrics where it is
    added (``name -> (sum, count)``, float64, no host sync).
    """
    layout, scale, denom = plan.layout, plan.scale, plan.denom
    f64 = torch.float64
    n, m = layout.coord_pos.shape[0], layout.box_coords.shape[0]
    stats = layout.stats
    loss = ce_loss

    # Token CE: text, and coordinates (weighted by coord_ce_weight, possibly 0); in ce_loss already.
    if gate_in_ce:
        terms = {"ce": ((ce.detach() * plan.ce_weight).sum() / denom).to(ce_loss.dtype)}
    else:
        terms = {"ce": ce_loss.detach()}
    ce_coord = ce[layout.coord_pos]
    metrics: Metrics = {
        "text_loss": metric_entry(ce.detach().to(f64) * layout.text_mask.reshape(-1),
                                  stats[STAT_NAMES.index("text_tokens")]),
        "coord_ce_loss": metric_entry(ce_coord, n),
        "incomplete_objects": metric_entry(stats[STAT_NAMES.index("incomplete_objects")], 1),
    }

    # Coordinate terms on the [n, num_bins] coordinate logits.
    trained = config.trains_coord_logits
    ct = coord_terms(coord_logits if trained else coord_logits.detach(), layout.coord_bins, layout.box_coords,
                     ce_coord if trained else ce_coord.detach(), eps=config.giou_eps, box_loss_name=config.box_loss,
                     soft_ce_sigma=config.soft_ce_sigma if config.lambda_soft_ce > 0 else None,
                     want_w1=config.lambda_w1 > 0, want_box_order=config.lambda_box_order > 0)
    coord_scale = scale[layout.coord_pos] if scale is not None else None
    if coord_scale is not None:
        box_weight = coord_scale[layout.box_coords].sum(dim=1)
    else:
        box_weight = torch.full_like(ct.l1, 4.0)
    # The coordinate distribution itself (every group).
    metrics["coord_acc"] = metric_entry(ct.correct, n)
    metrics["coord_bin_err"] = metric_entry(
        (ct.expected_bins.detach().to(f64) - layout.coord_bins.to(f64)).abs(), n)

    # CoordExp / geometric term: G = alpha_l1 * L1 (+ beta_giou * box loss with use_geom_loss), per box.
    if config.trains_coordexp:
        g = config.alpha_l1 * ct.l1
        if config.use_geom_loss:
            g = g + config.beta_giou * ct.box_loss
        coord_term = config.lambda_coord * (box_weight * g).sum() / denom
        loss = loss + coord_term
        terms["coord"] = coord_term.detach()
    l1, gl, bl = (t.detach().to(f64) for t in (ct.l1, ct.giou_loss, ct.box_loss))
    metrics["coord_loss"] = metric_entry(  # G as trained
        config.alpha_l1 * l1 + (config.beta_giou * bl if config.use_geom_loss else 0.0), m)
    metrics["coord_l1_loss"] = metric_entry(l1, m)
    metrics["coord_giou_loss"] = metric_entry(gl, m)
    metrics["coord_box_loss"] = metric_entry(bl, m)

    # Gate: -log(coordinate mass), per coordinate token.
    if config.trains_gate:
        gate = ct.gate if coord_scale is None else ct.gate * coord_scale
        gate_term = config.lambda_gate * gate.sum() / denom
        if gate_in_ce:
            ce_part = ce_coord.detach() if coord_scale is None else ce_coord.detach() * coord_scale
            loss = loss + (gate_term - config.lambda_gate * ce_part.sum() / denom)
        else:
            loss = loss + gate_term
        terms["gate"] = gate_term.detach()
    gate64 = ct.gate.detach().to(f64)
    metrics["gate_loss"] = metric_entry(gate64, n)
    metrics["coord_mass"] = metric_entry(torch.exp(-gate64).clamp(max=1.0), n)

    # Switches per coordinate token: soft-label CE, Wasserstein-1.
    for name, lam, per_token in (("soft_ce", config.lambda_soft_ce, ct.soft_ce), ("w1", config.lambda_w1, ct.w1)):
        if lam > 0:
            v = per_token if coord_scale is None else per_token * coord_scale
            term = lam * v.sum() / denom
            loss = loss + term
            terms[name] = term.detach()
        metrics[f"coord_{name}_loss"] = metric_entry(per_token if per_token is not None else gate64.new_zeros(()), n)

    # Switch per box: order of the expected box.
    if config.lambda_box_order > 0:
        term = config.lambda_box_order * (box_weight * ct.box_order).sum() / denom
        loss = loss + term
        terms["box_order"] = term.detach()
    metrics["coord_box_order_loss"] = metric_entry(
        ct.box_order if ct.box_order is not None else gate64.new_zeros(()), m)

    return LossOutput(loss=loss, terms=terms, metrics=metrics, layout=layout, preds=preds,
                      coord_logits=coord_logits.detach())


def compute_loss(logits: Tensor, labels: Tensor, vocab: CoordVocab, config: LossConfig,
                 num_items_in_batch: Union[Tensor, int, None] = None,
                 loss_scale: Optional[Tensor] = None) -> LossOutput:
    """The loss of one micro-batch under ms-swift's contract (the standard path, from logits).

    ``logits``: ``[B, T, V]`` (any float dtype; computed in float32), already trimmed by
    ``logits_to_keep`` if ms-swift did; ``labels``: ``[B, T]`` unshifted, ``-100`` = ignored;
    ``num_items_in_batch``: labelled targets over the accumulation window and all ranks (None: the
    local count); ``loss_scale``: ms-swift's per-token scale as it reaches a loss (rolled so that
    entry ``b * T + t`` belongs to the target of ``logits[b, t]``), or None.
    """
    if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(labels.shape):
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}: expected "
                         "[batch, seq, vocab] and [batch, seq] (labels trimmed like the logits)")
    V = logits.shape[-1]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    plan = _plan(labels, logits.device, dtype, V, vocab, config, num_items_in_batch, loss_scale)
    ce, coord_logits = token_ce_and_coord_logits(logits.reshape(-1, V), plan.targets.reshape(-1),
                                                 plan.layout.coord_pos, vocab.coord_start, vocab.num_bins,
                                                 reuse_buffer=True)
    ce_loss = (ce * plan.ce_weight).sum() / plan.denom
    return _assemble(plan, config, ce, coord_logits, ce_loss, gate_in_ce=False)


def compute_loss_from_hidden(hidden: Tensor, head_weight: Tensor, labels: Tensor, vocab: CoordVocab,
                             config: LossConfig, num_items_in_batch: Union[Tensor, int, None] = None,
                             loss_scale: Optional[Tensor] = None, *, chunk_rows: Optional[int] = None,
                             mm_dtype: Optional[torch.dtype] = None, want_preds: bool = False) -> LossOutput:
    """The same loss as ``compute_loss(hidden @ head_weight.T, ...)`` (the lean path), without the logits.

    ``hidden``: ``[B, T, H]`` final hidden states at the positions the logits would have (trimmed like the
    labels); ``head_weight``: ``[V, H]``, a bias-free LM head. See ``core.lean`` for how and what it costs.
    ``want_preds``: also return each labelled position's full-vocabulary argmax (``LossOutput.preds``).
    """
    if hidden.ndim != 3 or tuple(hidden.shape[:2]) != tuple(labels.shape):
        raise ValueError(f"hidden states {tuple(hidden.shape)} do not match labels {tuple(labels.shape)}: expected "
                         "[batch, seq, hidden] and [batch, seq] (labels trimmed like the hidden states)")
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    plan = _plan(labels, hidden.device, dtype, head_weight.shape[0], vocab, config, num_items_in_batch, loss_scale)
    layout = plan.layout
    # Every weight of a token's CE known up front, the gate's CE part included: the gradient is built in the
    # forward pass, chunk by chunk.
    token_weight = plan.ce_weight
    if config.trains_gate:
        gate_w = torch.zeros_like(token_weight).index_fill_(0, layout.coord_pos, config.lambda_gate)
        token_weight = token_weight + (gate_w if plan.scale is None else gate_w * plan.scale)
    token_weight = token_weight / plan.denom
    B, T, H = hidden.shape
    ce_loss, ce, coord_logits, preds = linear_ce_and_coord_logits(
        hidden.reshape(B * T, H), head_weight, plan.targets.reshape(-1), token_weight, layout.coord_pos,
        vocab.coord_start, vocab.num_bins, chunk_rows=chunk_rows, mm_dtype=mm_dtype, want_preds=want_preds)
    return _assemble(plan, config, ce, coord_logits, ce_loss, gate_in_ce=True,
                     preds=preds.reshape(B, T) if want_preds else None)
