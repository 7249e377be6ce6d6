"""The training loss of groups A, B and C as a plain function, and its validated configuration.

No ms-swift import: ``compute_loss(logits, labels, vocab, config, num_items_in_batch)`` follows
ms-swift's loss contract (unshifted labels, ``logits[:, t]`` predicts ``labels[:, t + 1]``,
``num_items_in_batch`` = labelled tokens over the gradient-accumulation window and all ranks) and
is what the registered ``--loss_type coordexp_*`` classes call.

The loss, per labelled target token ``t`` (``s_t`` = ms-swift's ``loss_scale``, 1 by default)::

    loss = ( sum_text  s_t * CE_t
           + lambda_coord_ce * [use_coord_ce] * sum_coord s_t * CE_t
           + lambda_coord * [use_coordexp_loss] * sum_boxes (sum_{t in box} s_t) * G_box
           + lambda_gate * sum_coord s_t * (-log mass_t)
           + lambda_soft_ce * sum_coord s_t * SoftCE_t
           + lambda_w1 * sum_coord s_t * W1_t
           + lambda_box_order * sum_boxes (sum_{t in box} s_t) * Order_box ) / num_items_in_batch

    G_box = alpha_l1 * ||b_hat - b||_1 + [use_geom_loss] * beta_giou * (1 - IoU_variant(b_hat, b))

The last three terms and the box-loss variant (``giou`` | ``diou`` | ``ciou``, ``box_loss``) are
switches independent of each other and of the groups; off (``giou``) by default, so A/B/C are the
spec's. ``SoftCE_t``: cross-entropy of the restricted (coordinate-token) softmax against a Gaussian over
the bins centred on the target bin, width ``soft_ce_sigma`` bins; ``W1_t``: the 1-D Wasserstein
distance between the restricted softmax and the target bin, ``sum_k p_k |k - target| / NUM_BINS``
(image fractions; the ranked-probability / CDF-difference form ``sum_k |F_p(k) - F_target(k)|`` gives
the same value); ``Order_box = max(x1 - x2, 0) + max(y1 - y2, 0)`` of the expected box. Which
predicted box meets which target box is ``geometry.match_boxes`` (index-based in this phase).

``CE_t`` is the full-vocabulary cross-entropy; ``b_hat`` the CoordExp box (expectation over the
coordinate tokens' restricted softmax) and ``b`` the dequantised target bins; ``mass_t`` the
probability the full softmax puts on the coordinate tokens. Every coordinate token carries its
box's geometric loss, so a box weighs 4 tokens; see ``docs/losses.md`` for why.

Cost (design constraint): one cross-entropy pass over the full vocabulary, the coordinate terms
computed on ``[n_coord, num_bins]`` rows gathered first, and a single logits-sized gradient buffer
for all terms (``token_ce_and_coord_logits``).

The lean path, ``compute_loss_from_hidden(hidden, head_weight, ...)`` (``LossConfig.lean``,
``COORDEXP_LEAN=1``), computes the same loss from the final hidden states and the LM head weight without
ever holding ``[tokens, vocab]`` logits (``core.lean``).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .coordexp import bin_expectation, dequantize_bins, restricted_softmax
from .codec import NUM_BINS
from .flags import parse_bool
from .geometry import BOX_LOSSES, DEFAULT_EPS, box_l1, box_loss, box_order_penalty, giou_loss, match_boxes
from .lean import linear_ce_and_coord_logits
from .sequence import IGNORE_INDEX, STAT_NAMES, SequenceLayout, parse_targets, shift_labels
from .vocab import CoordVocab

ENV_PREFIX = "COORDEXP_"


class LossConfigError(ValueError):
    """A contradictory or invalid loss configuration; the message names the flags."""


@dataclass(frozen=True)
class LossConfig:
    """The flags of the loss. Validated on construction (``LossConfigError`` names the flags).

    Text cross-entropy (every labelled non-coordinate token) is always on.
    """

    use_coord_ce: bool = True        # cross-entropy at coordinate positions
    use_coordexp_loss: bool = False  # CoordExp coordinate loss (alpha_l1 * L1 on expected boxes)
    use_geom_loss: bool = False      # add beta_giou * (1 - GIoU) to the CoordExp loss; needs use_coordexp_loss
    lambda_coord: float = 1.0        # weight of the CoordExp/geometric term
    lambda_coord_ce: float = 1.0     # weight of the coordinate cross-entropy
    alpha_l1: float = 1.0
    beta_giou: float = 1.0
    lambda_gate: float = 0.0         # optional: -log(coordinate mass) at coordinate positions; 0 = off
    giou_eps: float = DEFAULT_EPS    # denominator guard of the box loss (GIoU, DIoU, CIoU)
    lean: bool = False               # compute the loss from the hidden states and the head (no full logits)
    # Switches independent of the groups, off by default (see the module docstring).
    box_loss: str = "giou"           # IoU variant of the geometric term: giou | diou | ciou (geometry.BOX_LOSSES)
    lambda_soft_ce: float = 0.0      # Gaussian soft-label CE over the bins, per coordinate token; 0 = off
    soft_ce_sigma: float = 2.0       # width of that Gaussian, in bins
    lambda_w1: float = 0.0           # Wasserstein-1 / ranked-probability term, per coordinate token; 0 = off
    lambda_box_order: float = 0.0    # penalty for expected x2 < x1 / y2 < y1, per box; 0 = off

    def __post_init__(self) -> None:
        self.check_values({f.name: getattr(self, f.name) for f in fields(self)})
        self._check_combination()

    @classmethod
    def check_values(cls, values: Mapping[str, object]) -> None:
        """Each value on its own (type, range, choice), whatever the group; ``LossConfigError`` names it."""
        for f in fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            if f.type in ("bool", bool):
                if not isinstance(v, bool):
                    raise LossConfigError(f"{f.name} ({env_key(f.name)}) must be true or false, got {v!r}")
            elif f.type in ("str", str):
                if not isinstance(v, str):
                    raise LossConfigError(f"{f.name} ({env_key(f.name)}) must be a string, got {v!r}")
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise LossConfigError(
                        f"{f.name} ({env_key(f.name)}) must be a finite number >= 0, got {v!r}")
        if "box_loss" in values and values["box_loss"] not in BOX_LOSSES:
            raise LossConfigError(f"box_loss ({env_key('box_loss')}) must be one of {sorted(BOX_LOSSES)}, "
                                  f"got {values['box_loss']!r}")
        if values.get("soft_ce_sigma", 1.0) <= 0:
            raise LossConfigError(f"soft_ce_sigma ({env_key('soft_ce_sigma')}) must be > 0 bins, "
                                  f"got {values['soft_ce_sigma']}")
        if values.get("giou_eps", 1.0) <= 0:
            raise LossConfigError(f"giou_eps ({env_key('giou_eps')}) must be > 0, got {values['giou_eps']}")

    def _check_combination(self) -> None:
        if self.use_geom_loss and not self.use_coordexp_loss:
            raise LossConfigError(
                "use_geom_loss=true needs use_coordexp_loss=true: the geometric loss is computed on the CoordExp "
                f"boxes ({env_key('use_geom_loss')}, {env_key('use_coordexp_loss')})")
        if self.use_coord_ce and self.lambda_coord_ce == 0:
            raise LossConfigError(
                f"use_coord_ce=true with lambda_coord_ce=0 switches the term on with no weight "
                f"({env_key('use_coord_ce')}, {env_key('lambda_coord_ce')})")
        if self.use_coordexp_loss and self.lambda_coord == 0:
            raise LossConfigError(
                f"use_coordexp_loss=true with lambda_coord=0 switches the term on with no weight "
                f"({env_key('use_coordexp_loss')}, {env_key('lambda_coord')})")
        if self.use_coordexp_loss and self.alpha_l1 == 0 and not (self.use_geom_loss and self.beta_giou > 0):
            raise LossConfigError(
                f"use_coordexp_loss=true with alpha_l1=0 and no GIoU part (use_geom_loss={self.use_geom_loss}, "
                f"beta_giou={self.beta_giou}) leaves the CoordExp loss empty "
                f"({env_key('alpha_l1')}, {env_key('use_geom_loss')}, {env_key('beta_giou')})")
        if not self.use_coord_ce and not self.use_coordexp_loss:
            raise LossConfigError(
                "every coordinate term is off (use_coord_ce=false, use_coordexp_loss=false): nothing would train "
                f"the coordinate tokens ({env_key('use_coord_ce')}, {env_key('use_coordexp_loss')})")

    # ------------------------------------------------------------------ presets / environment
    @classmethod
    def preset(cls, group: str) -> "LossConfig":
        """Group ``"A"``, ``"B"`` or ``"C"`` with the default weights."""
        try:
            return cls(**PRESETS[group.upper()])
        except KeyError:
            raise LossConfigError(f"unknown loss group {group!r}; expected one of {sorted(PRESETS)}") from None

    @classmethod
    def from_env(cls, base: Union[str, "LossConfig"] = "A",
                 environ: Optional[Mapping[str, str]] = None) -> Tuple["LossConfig", Dict[str, str]]:
        """``base`` (a group letter or a config) overridden by ``COORDEXP_*`` variables.

        Returns the validated config and the overrides that were read (env key -> raw value).
        An unknown ``COORDEXP_*`` key or an unparsable value is an error naming the key.
        """
        cfg = cls.preset(base) if isinstance(base, str) else base
        values, overrides = cls.parse_env(environ)
        return replace(cfg, **values), overrides

    @classmethod
    def parse_env(cls, environ: Optional[Mapping[str, str]] = None) -> Tuple[Dict[str, object], Dict[str, str]]:
        """The ``COORDEXP_*`` keys of ``environ`` parsed: (field -> value, env key -> raw value).

        ``LossConfigError`` for an unknown key (listing the known ones) or an unparsable value (naming it);
        the values are not checked against each other (that needs the group: ``from_env``).
        """
        environ = os.environ if environ is None else environ
        known = {env_key(f.name): f for f in fields(cls)}
        overrides = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise LossConfigError(f"unknown loss setting(s) {unknown}; known keys: {sorted(known)}")
        values = {}
        for key, raw in overrides.items():
            f = known[key]
            if f.type in ("bool", bool):
                values[f.name] = parse_bool(key, raw, LossConfigError)
            elif f.type in ("str", str):
                values[f.name] = str(raw).strip().lower()
            else:
                values[f.name] = _parse_float(key, raw)
        return values, overrides

    @classmethod
    def check_env(cls, environ: Optional[Mapping[str, str]] = None,
                  group: Optional[str] = None) -> Optional["LossConfig"]:
        """Validate the ``COORDEXP_*`` keys of ``environ``: with ``group``, the whole configuration (returned);
        without, every key and value on its own (returns None). Raises ``LossConfigError``."""
        if group is not None:
            return cls.from_env(group, environ)[0]
        values, _ = cls.parse_env(environ)
        cls.check_values(values)
        return None

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    @property
    def coord_ce_weight(self) -> float:
        return self.lambda_coord_ce if self.use_coord_ce else 0.0

    @property
    def trains_coordexp(self) -> bool:
        return self.use_coordexp_loss

    @property
    def trains_gate(self) -> bool:
        return self.lambda_gate > 0

    @property
    def trains_coord_logits(self) -> bool:
        """Some term back-propagates into the coordinate logits (beyond the coordinate CE)."""
        return (self.trains_coordexp or self.trains_gate or self.lambda_soft_ce > 0 or self.lambda_w1 > 0
                or self.lambda_box_order > 0)


PRESETS: Dict[str, Dict[str, bool]] = {
    # A: cross-entropy on every token.
    "A": dict(use_coord_ce=True, use_coordexp_loss=False, use_geom_loss=False),
    # B: cross-entropy on non-coordinate tokens; coordinates only through the CoordExp geometric loss.
    "B": dict(use_coord_ce=False, use_coordexp_loss=True, use_geom_loss=True),
    # C: both.
    "C": dict(use_coord_ce=True, use_coordexp_loss=True, use_geom_loss=True),
}
# The one group <-> ``--loss_type`` table (the registered ms-swift losses, ``swift_ext.loss``).
LOSS_TYPES: Dict[str, str] = {"A": "coordexp_ce", "B": "coordexp_geom", "C": "coordexp_hybrid"}
GROUP_OF_LOSS_TYPE: Dict[str, str] = {loss_type: group for group, loss_type in LOSS_TYPES.items()}


def env_key(field_name: str) -> str:
    """The environment key of a config field, e.g. ``lambda_coord`` -> ``COORDEXP_LAMBDA_COORD``."""
    return ENV_PREFIX + field_name.upper()


def _parse_float(key: str, raw: str) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise LossConfigError(f"{key}={raw!r} is not a number") from None


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


# ---------------------------------------------------------------------------------------------- loss
# Logged components: (name, kind). "mean" = sum / count over the logging interval; "sum" = total.
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


def logged_metric_names(config: "LossConfig") -> Tuple[str, ...]:
    """The components a run logs: every one of the groups, plus those of the switches that are on."""
    on = {
        "gate_loss": config.trains_gate,
        "coord_box_loss": config.box_loss != "giou",
        "coord_soft_ce_loss": config.lambda_soft_ce > 0,
        "coord_w1_loss": config.lambda_w1 > 0,
        "coord_box_order_loss": config.lambda_box_order > 0,
    }
    return tuple(name for name in METRIC_NAMES if on.get(name, True))


@dataclass
class LossOutput:
    """``loss``: the scalar to back-propagate. ``terms``: its three parts (detached), which add up to it.
    ``metric_sums`` / ``metric_counts``: ``[len(METRICS)]`` float64, detached, on the logits' device.
    """

    loss: Tensor
    terms: Dict[str, Tensor]
    metric_sums: Tensor
    metric_counts: Tensor
    layout: SequenceLayout
    preds: Optional[Tensor] = None  # [B, T] full-vocabulary argmax (lean path, for ms-swift's token_acc)
    coord_logits: Optional[Tensor] = None  # [n, num_bins] detached coordinate logits (for core.yardsticks)

    def components(self) -> Dict[str, Tensor]:
        """Each metric of this batch: mean (sum / count, 0 when empty) or sum, as 0-dim tensors."""
        out = {}
        for i, (name, kind) in enumerate(METRICS):
            s, c = self.metric_sums[i], self.metric_counts[i]
            out[name] = s if kind == "sum" else s / c.clamp(min=1)
        return out



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
    """The coordinate terms and metrics on top of the CE part.

    ``ce_loss``: the differentiable CE term. ``gate_in_ce``: the CE part of the gate term (``lambda_gate *
    s_t * CE_t`` at coordinate tokens) is already in ``ce_loss`` (lean path, where ``ce`` itself carries no
    gradient), so only the rest of the gate term is added here.
    """
    layout, scale, denom = plan.layout, plan.scale, plan.denom
    loss = ce_loss
    if gate_in_ce:
        terms = {"ce": ((ce.detach() * plan.ce_weight).sum() / denom).to(ce_loss.dtype)}
    else:
        terms = {"ce": ce_loss.detach()}

    # Coordinate terms on the [n, num_bins] coordinate logits.
    ce_coord = ce[layout.coord_pos]
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
    if config.trains_coordexp:
        g = config.alpha_l1 * ct.l1
        if config.use_geom_loss:
            g = g + config.beta_giou * ct.box_loss
        coord_term = config.lambda_coord * (box_weight * g).sum() / denom
        loss = loss + coord_term
        terms["coord"] = coord_term.detach()
    if config.trains_gate:
        gate = ct.gate if coord_scale is None else ct.gate * coord_scale
        gate_term = config.lambda_gate * gate.sum() / denom
        if gate_in_ce:
            ce_part = ce_coord.detach() if coord_scale is None else ce_coord.detach() * coord_scale
            loss = loss + (gate_term - config.lambda_gate * ce_part.sum() / denom)
        else:
            loss = loss + gate_term
        terms["gate"] = gate_term.detach()
    for name, lam, per_token in (("soft_ce", config.lambda_soft_ce, ct.soft_ce), ("w1", config.lambda_w1, ct.w1)):
        if lam > 0:
            v = per_token if coord_scale is None else per_token * coord_scale
            term = lam * v.sum() / denom
            loss = loss + term
            terms[name] = term.detach()
    if config.lambda_box_order > 0:
        term = config.lambda_box_order * (box_weight * ct.box_order).sum() / denom
        loss = loss + term
        terms["box_order"] = term.detach()

    with torch.no_grad():
        f64 = torch.float64
        n = layout.coord_pos.shape[0]
        m = layout.box_coords.shape[0]
        l1, gl = ct.l1.to(f64), ct.giou_loss.to(f64)
        gate = ct.gate.to(f64)
        stats = layout.stats
        text = layout.text_mask.reshape(-1)
        bl = ct.box_loss.to(f64)
        zero = torch.zeros((), dtype=f64, device=l1.device)
        opt_sum = lambda t: zero if t is None else t.detach().to(f64).sum()  # noqa: E731
        sums = torch.stack([
            (ce.detach().to(f64) * text).sum(),
            ce_coord.detach().to(f64).sum(),
            # coord_loss: G as trained, alpha_l1 * L1 (+ beta_giou * box loss only with use_geom_loss).
            (config.alpha_l1 * l1 + (config.beta_giou * bl if config.use_geom_loss else 0.0)).sum(),
            l1.sum(),
            gl.sum(),
            gate.sum(),
            ct.correct.to(f64).sum(),
            (ct.expected_bins.to(f64) - layout.coord_bins.to(f64)).abs().sum(),
            torch.exp(-gate).clamp(max=1.0).sum(),
            stats[STAT_NAMES.index("incomplete_objects")].to(f64),
            bl.sum(),
            opt_sum(ct.soft_ce),
            opt_sum(ct.w1),
            opt_sum(ct.box_order),
        ])
        counts = torch.tensor([0, n, m, m, m, n, n, n, n, 1, m, n, n, m], dtype=f64, device=sums.device)
        counts[0] = stats[STAT_NAMES.index("text_tokens")].to(f64)
    return LossOutput(loss=loss, terms=terms, metric_sums=sums, metric_counts=counts, layout=layout, preds=preds,
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
