"""What the ``coord`` dataset, the checks of its arguments and the template share (no ms-swift import).

``DATASET_NAME`` (``--dataset coord:PATH``), ``BINS_TYPE`` (the ``bbox_type`` of rows whose boxes the
dataset preprocessor already quantised), ``bad_samples_policy`` (``COORD_BAD_SAMPLES``: ``error`` or
``drop``), ``order_policy_setting`` / ``order_seed_setting`` (``COORD_ORDER`` / ``COORD_ORDER_SEED``, the object
order), ``unescape_path`` (``%23`` in a ``coord:`` path) and ``coco_json_message``.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Optional

from ..core import codec

DATASET_NAME = "coord"
# bbox_type of rows whose boxes the dataset preprocessor already quantised (see dataset.py, template.py).
BINS_TYPE = "coord_bins"


def bad_samples_policy() -> str:
    """``COORD_BAD_SAMPLES``: ``error`` (default) or ``drop``; anything else is a ``ValueError``."""
    policy = os.environ.get("COORD_BAD_SAMPLES", "error").strip().lower()
    if policy not in ("error", "drop"):
        raise ValueError(f"COORD_BAD_SAMPLES must be 'error' or 'drop', got {policy!r}")
    return policy


def order_policy_setting(environ: Optional[Mapping[str, str]] = None) -> codec.OrderPolicy:
    """The object order policy ``COORD_ORDER`` names in ``environ`` (default ``os.environ``); unset or empty:
    ``y1x1``. ``ValueError`` naming the setting and the registered policies otherwise."""
    environ = os.environ if environ is None else environ
    return codec.order_policy(environ.get(codec.ORDER_ENV, "") or None)


def order_seed_setting(environ: Optional[Mapping[str, str]] = None) -> int:
    """``COORD_ORDER_SEED`` in ``environ`` (default ``os.environ``) as an integer (default 0); ``ValueError``
    naming it otherwise."""
    environ = os.environ if environ is None else environ
    return codec.order_seed(environ.get(codec.ORDER_SEED_ENV, "0"))


def coco_json_message(path: str) -> str:
    return (f"{path} is a COCO instances JSON, not unified samples (one JSON object per line with 'image' and "
            f"'objects'). Convert it first: coord-prepare-coco --ann {path} --images IMAGE_DIR --out train.jsonl, "
            "then --dataset coord:train.jsonl")


def unescape_path(path: str) -> str:
    """``%23`` -> ``#`` in a ``coord:`` path: ms-swift reads ``#N`` as a sample count, so a real ``#`` is
    written ``%23`` (``%25`` for a real ``%``)."""
    return re.sub(r"%(23|25)", lambda m: "#" if m.group(1) == "23" else "%", path)
