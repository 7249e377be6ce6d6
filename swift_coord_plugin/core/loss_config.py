"""The validated configuration of the loss: flags, group presets and their ``COORDEXP_*`` keys.

Public API: ``LossConfig`` (``preset``, ``from_env``, ``parse_env``, ``check_env``, ``check_values``),
``LossConfigError``, ``PRESETS``, ``LOSS_TYPES`` / ``GROUP_OF_LOSS_TYPE`` (group <-> ``--loss_type``),
``env_key``, ``ENV_PREFIX``. The environment is always passed in as a mapping (the ms-swift glue passes
``environment.current()``). Flags and keys: docs/losses.md, "Flags, environment keys, presets".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Dict, Mapping, Optional, Tuple, Union

from .flags import parse_bool
from .geometry import BOX_LOSSES, DEFAULT_EPS

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
    # Switches independent of the groups, off by default (docs/losses.md, "Switches beyond the groups").
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
    def from_env(cls, base: Union[str, "LossConfig"],
                 environ: Mapping[str, str]) -> Tuple["LossConfig", Dict[str, str]]:
        """``base`` (a group letter or a config) overridden by the ``COORDEXP_*`` keys of ``environ``.

        Returns the validated config and the overrides that were read (env key -> raw value).
        An unknown ``COORDEXP_*`` key or an unparsable value is an error naming the key.
        """
        cfg = cls.preset(base) if isinstance(base, str) else base
        values, overrides = cls.parse_env(environ)
        return replace(cfg, **values), overrides

    @classmethod
    def parse_env(cls, environ: Mapping[str, str]) -> Tuple[Dict[str, object], Dict[str, str]]:
        """The ``COORDEXP_*`` keys of ``environ`` parsed: (field -> value, env key -> raw value).

        ``LossConfigError`` for an unknown key (listing the known ones) or an unparsable value (naming it);
        the values are not checked against each other (that needs the group: ``from_env``).
        """
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
    def check_env(cls, environ: Mapping[str, str],
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
