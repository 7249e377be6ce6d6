"""The one reader of the process environment: the plugin's keys (``COORD_*``, ``COORDEXP_*``), their defaults and
their parsing into values (no ms-swift or torch import).

Public: ``current`` (the mapping every other module reads through), the key names, and one reader per key:
``data_root``, ``image_check_cache_dir``, ``bad_samples_policy``, ``order_policy_setting``, ``order_seed_setting``,
``slots_path``, ``decoding_record_path``, ``init_rows_settings``. The keys whose values the core parses
(``COORDEXP_*``: ``core.loss_config``; ``COORD_INPUT_NOISE_*``: ``core.input_noise``; ``COORD_DECODING*``:
``swift_ext.decoding``) are read as ``current()`` handed to those parsers. Every key: docs/losses.md, "Setting a
switch: every key of the plugin"; why one reader: docs/design/swift_ext_layout.md.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Tuple

from .core import codec

DATA_ROOT_ENV = "COORD_DATA_ROOT"
IMAGE_CHECK_CACHE_ENV = "COORD_IMAGE_CHECK_CACHE"
BAD_SAMPLES_ENV = "COORD_BAD_SAMPLES"
ORDER_ENV = codec.ORDER_ENV  # COORD_ORDER
ORDER_SEED_ENV = codec.ORDER_SEED_ENV  # COORD_ORDER_SEED
PROMPT_ENV = "COORD_PROMPT"
SLOTS_ENV = "COORD_DECODING_SLOTS"
DECODING_RECORD_ENV = "COORD_DECODING_RECORD"
INIT_SEED_ENV = "COORD_INIT_SEED"
INIT_NOISE_ENV = "COORD_INIT_NOISE"


def current(environ: Optional[Mapping[str, str]] = None) -> Mapping[str, str]:
    """``environ`` when given (a plain mapping, as tests and the start-up check pass), else the process environment
    (``os.environ``, live: a key set later is seen by the next read)."""
    return os.environ if environ is None else environ


def data_root(environ: Optional[Mapping[str, str]] = None) -> str:
    """``COORD_DATA_ROOT`` stripped, ``""`` when unset: the folder a relative ``coord:<path>`` is taken from."""
    return current(environ).get(DATA_ROOT_ENV, "").strip()


def image_check_cache_dir(environ: Optional[Mapping[str, str]] = None) -> str:
    """``COORD_IMAGE_CHECK_CACHE`` (a folder) when set and not empty, else ``~/.cache/swift_coord_plugin``."""
    return current(environ).get(IMAGE_CHECK_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                                        "swift_coord_plugin")


def bad_samples_policy(environ: Optional[Mapping[str, str]] = None) -> str:
    """``COORD_BAD_SAMPLES``: ``error`` (default) or ``drop``; anything else is a ``ValueError``."""
    policy = current(environ).get(BAD_SAMPLES_ENV, "error").strip().lower()
    if policy not in ("error", "drop"):
        raise ValueError(f"COORD_BAD_SAMPLES must be 'error' or 'drop', got {policy!r}")
    return policy


def order_policy_setting(environ: Optional[Mapping[str, str]] = None) -> codec.OrderPolicy:
    """The object order policy ``COORD_ORDER`` names in ``environ`` (default ``os.environ``); unset or empty:
    ``y1x1``. ``ValueError`` naming the setting and the registered policies otherwise."""
    return codec.order_policy(current(environ).get(ORDER_ENV, "") or None)


def order_seed_setting(environ: Optional[Mapping[str, str]] = None) -> int:
    """``COORD_ORDER_SEED`` in ``environ`` (default ``os.environ``) as an integer (default 0); ``ValueError``
    naming it otherwise."""
    return codec.order_seed(current(environ).get(ORDER_SEED_ENV, "0"))


def _abs_path_setting(key: str, environ: Optional[Mapping[str, str]]) -> Optional[str]:
    path = current(environ).get(key, "").strip()
    return os.path.abspath(path) if path else None


def slots_path(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The side file named by ``COORD_DECODING_SLOTS`` (absolute), or None when it is not set."""
    return _abs_path_setting(SLOTS_ENV, environ)


def decoding_record_path(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The record file named by ``COORD_DECODING_RECORD`` (absolute), or None when it is not set."""
    return _abs_path_setting(DECODING_RECORD_ENV, environ)


def init_rows_settings(environ: Optional[Mapping[str, str]] = None) -> Tuple[int, float]:
    """``(seed, noise)`` of the new token rows' initialisation: ``COORD_INIT_SEED`` (integer, default 0) and
    ``COORD_INIT_NOISE`` (in standard deviations, default 0.01). ``ValueError`` (Python's) for an unparsable one."""
    environ = current(environ)
    return int(environ.get(INIT_SEED_ENV, "0")), float(environ.get(INIT_NOISE_ENV, "0.01"))
