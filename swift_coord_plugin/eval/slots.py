"""Reading the exact CoordExp side file of a result file (``<results>.slots.jsonl``, no ms-swift import).

The plugin writes it on the transformers backend (``swift_ext.slots``): one line per answer,
``{"key": row key, "slots": [[t, bin, E, std], ...]}``. ``SlotIndex.take`` hands the result rows their lines by
key in order of occurrence (the n-th row of an image gets the n-th line of that image), so batching,
sharding (merged in shard order) and appending keep rows and lines together; each coordinate token the
evaluator reads is then checked against its line (same position ``t``, same bin), and a mismatch is an error
naming both files and lines.
"""
from __future__ import annotations

import collections
import json
import math
import os
from typing import Deque, Dict, Optional, Tuple

from ..data import textfiles

SLOTS_SUFFIX = ".slots.jsonl"


class SlotsError(ValueError):
    """A side file that cannot be read or does not match its result file; the message names both."""


def slots_path(results_path: str) -> str:
    """Where the side file of ``results_path`` lies: ``<results>.slots.jsonl``."""
    return results_path + SLOTS_SUFFIX


class RowSlots:
    """One answer's coordinate slots: position ``t`` -> ``(bin, E, std)``; ``line`` of the side file."""

    def __init__(self, line: int, by_position: Dict[int, Tuple[int, float, float]]):
        self.line = line
        self.by_position = by_position

    def at(self, t: int, bin_: int, where: str) -> Tuple[float, float]:
        """``(E, std)`` in bins of the slot at generated position ``t``, which must have written ``bin_``."""
        got = self.by_position.get(t)
        if got is None or got[0] != bin_:
            have = "no slot" if got is None else f"bin {got[0]}"
            raise SlotsError(f"{where}: coordinate token {t} (bin {bin_}) does not match line {self.line} of the "
                             f"slots file ({have} at position {t}): the files are not of the same run")
        return got[1], got[2]


class SlotIndex:
    """The lines of a side file, by row key, in file order."""

    def __init__(self, path: str):
        self.path = path
        self.lines = 0
        self._by_key: Dict[Optional[str], Deque[RowSlots]] = collections.defaultdict(collections.deque)
        try:
            text = textfiles.read_text(path)
        except (OSError, textfiles.TextEncodingError) as e:
            raise SlotsError(f"{path}: unreadable slots file: {e}") from None
        for lineno, raw in enumerate(text.splitlines(), 1):
            if raw.strip():
                key, row = self._parse(raw, lineno)
                self._by_key[key].append(row)
                self.lines += 1

    def _parse(self, raw: str, lineno: int) -> Tuple[Optional[str], RowSlots]:
        try:
            obj = json.loads(raw)
            by_position = {}
            for t, b, e, s in obj["slots"]:
                if not (isinstance(t, int) and isinstance(b, int) and math.isfinite(e) and math.isfinite(s)):
                    raise ValueError(f"bad slot {[t, b, e, s]}")
                by_position[t] = (b, float(e), float(s))
            key = obj["key"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SlotsError(f"{self.path}:{lineno}: expected {{\"key\": ..., \"slots\": [[t, bin, E, std], ...]}}: "
                             f"{e}") from None
        return key, RowSlots(lineno, by_position)

    def take(self, key: Optional[str]) -> Optional[RowSlots]:
        """The next unused line of ``key`` (None when there is none left)."""
        lines = self._by_key.get(key)
        return lines.popleft() if lines else None


def load(results_path: str) -> Optional[SlotIndex]:
    """The side file of ``results_path`` when it exists, else None."""
    path = slots_path(results_path)
    return SlotIndex(path) if os.path.isfile(path) else None
