"""Object order policies: the order in which a target's objects are written (no ms-swift, no torch).

API: ``OrderPolicy``, ``ORDER_POLICIES``, ``register_order_policy``, ``order_policy(name)``, ``order_seed(seed)``,
``order_key`` / ``order_indices`` / ``order_objects``, ``draw_order`` (the ``random`` policy's permutations).
Nothing here reads the environment: the ``COORD_ORDER`` / ``COORD_ORDER_SEED`` settings are read by their
callers (``swift_ext.rows``) and handed over. Re-exported by ``core.codec``. Rules: docs/design/codec.md
("Object order"), docs/data.md ("Object order").
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, TypeVar, Union

from .bins import quantize

ORDER_ENV = "COORD_ORDER"             # the setting that names the object order policy of training targets
ORDER_SEED_ENV = "COORD_ORDER_SEED"   # the setting of the ``random`` policy's seed (default 0)
DEFAULT_ORDER = "y1x1"

OrderKey = Callable[[Sequence[float]], tuple]
Obj = TypeVar("Obj")  # anything with a ``bbox`` (x1, y1, x2, y2), e.g. ``codec.DetObject``


@dataclass(frozen=True)
class OrderPolicy:
    """How the objects of a target are ordered.

    ``key(bbox)``: the sort key of a normalised ``(x1, y1, x2, y2)`` box (stable sort, ascending): the order
    written into files and, for a fixed policy, the order trained on. ``redraw``: the template
    re-orders every time it encodes a sample, with ``draw_order`` (seeded per sample and epoch), starting
    from the ``key`` order.
    """

    name: str
    key: OrderKey
    redraw: bool = False
    description: str = ""


def _y1x1_key(bbox: Sequence[float]) -> tuple:
    y1, x1 = float(bbox[1]), float(bbox[0])
    return (quantize(y1), quantize(x1), y1, x1)


def _x1y1_key(bbox: Sequence[float]) -> tuple:
    y1, x1 = float(bbox[1]), float(bbox[0])
    return (quantize(x1), quantize(y1), x1, y1)


ORDER_POLICIES: Dict[str, OrderPolicy] = {}


def register_order_policy(policy: OrderPolicy, exist_ok: bool = False) -> None:
    """Add a policy under ``policy.name`` (then selectable with ``COORD_ORDER=<name>``)."""
    if policy.name in ORDER_POLICIES and not exist_ok:
        raise ValueError(f"order policy {policy.name!r} is already registered")
    ORDER_POLICIES[policy.name] = policy


register_order_policy(OrderPolicy("y1x1", _y1x1_key, description="top to bottom, then left to right (the spec)"))
register_order_policy(OrderPolicy("x1y1", _x1y1_key, description="left to right, then top to bottom"))
register_order_policy(OrderPolicy("random", _y1x1_key, redraw=True,
                                  description="a new permutation per sample and epoch, seeded"))


def order_policy(name: Optional[str] = None) -> OrderPolicy:
    """The registered policy ``name`` (case and surrounding spaces ignored); ``None``: the default, ``y1x1``.
    ``ValueError`` names the setting (``COORD_ORDER``) and the registered policies when the name is unknown.
    """
    if name is None:
        name = DEFAULT_ORDER
    key = str(name).strip().lower()
    if key not in ORDER_POLICIES:
        raise ValueError(f"{ORDER_ENV}={name!r} is not an object order policy; registered: {sorted(ORDER_POLICIES)}")
    return ORDER_POLICIES[key]


def order_seed(seed: Union[int, str] = 0) -> int:
    """The ``random`` policy's seed as an integer: ``seed`` an int or its text (surrounding spaces ignored).
    ``ValueError`` naming the setting (``COORD_ORDER_SEED``) otherwise."""
    raw = seed
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError(f"{ORDER_SEED_ENV}={raw!r} is not an integer") from None


def order_key(bbox: Sequence[float], policy: Optional[OrderPolicy] = None) -> tuple:
    """The sort key of ``bbox`` under ``policy`` (default: the ``y1x1`` policy, bins first)."""
    return (policy or ORDER_POLICIES[DEFAULT_ORDER]).key(bbox)


def order_indices(bboxes: Sequence[Sequence[float]], policy: Optional[OrderPolicy] = None) -> List[int]:
    """Indices of normalised ``bboxes`` in the policy's key order (stable for ties)."""
    p = policy or ORDER_POLICIES[DEFAULT_ORDER]
    return sorted(range(len(bboxes)), key=lambda i: p.key(bboxes[i]))


def order_objects(objects: Iterable[Obj], policy: Optional[OrderPolicy] = None) -> List[Obj]:
    """Objects (anything with a ``bbox``, e.g. ``codec.DetObject``) in the policy's key order (default ``y1x1``: bins of ``y1`` then ``x1``, then the continuous
    values), stable for ties."""
    p = policy or ORDER_POLICIES[DEFAULT_ORDER]
    return sorted(objects, key=lambda o: p.key(o.bbox))


def draw_order(n: int, sample_key: str, epoch: int, seed: int) -> List[int]:
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch, sample_key)``.

    The generator is seeded with the SHA-256 of those three (not Python's salted ``hash``), so the same run
    draws the same orders in every process and on every machine, and a new epoch draws new ones.
    """
    digest = hashlib.sha256(f"{int(seed)}|{int(epoch)}|{sample_key}".encode("utf-8")).digest()
    perm = list(range(n))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(perm)
    return perm
