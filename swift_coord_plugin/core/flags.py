"""Boolean switches written as text (environment values, YAML ``ENV:`` entries): one parser for the package.

``parse_bool(key, raw)`` -> ``bool``; ``TRUE_WORDS`` / ``FALSE_WORDS`` are what it accepts (case-insensitive).
"""
from __future__ import annotations

from typing import Type

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def is_true(raw) -> bool:
    """Lenient reading: ``True`` for a ``TRUE_WORDS`` value, ``False`` for anything else (unset included)."""
    return str(raw or "").strip().lower() in TRUE_WORDS


def parse_bool(key: str, raw, error: Type[Exception] = ValueError, empty: bool = None) -> bool:
    """Strict reading of ``raw`` (the value of ``key``): ``TRUE_WORDS`` -> True, ``FALSE_WORDS`` -> False; an
    empty value gives ``empty`` when that is not None. Anything else raises ``error`` naming ``key`` and the value.
    """
    s = str(raw).strip().lower()
    if s in TRUE_WORDS:
        return True
    if s in FALSE_WORDS:
        return False
    if s == "" and empty is not None:
        return empty
    raise error(f"{key}={raw!r} is not a boolean (true/false/1/0)")
