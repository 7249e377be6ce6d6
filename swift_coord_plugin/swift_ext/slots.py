"""Exact CoordExp values of every coordinate slot, written beside the result rows (transformers backend).

``COORD_DECODING_SLOTS=<file>`` (``shell/eval.sh`` sets ``<results>.slots.jsonl``) under ``constrained`` or
``coordexp`` decoding: each answer appends one line ``{"key": ..., "slots": [[t, bin, E, std], ...]}``, one entry
per generated coordinate token: ``t`` its index among the answer's generated tokens (its entry in the result
row's ``logprobs.content``), ``bin`` the bin written, ``E`` and ``std`` the expectation and standard deviation,
in bins, of the grammar-restricted distribution over all 1000 coordinate tokens at that slot
(``core.coordexp.expected_bins_and_spread``). ``key`` is ``core.samples.row_key`` of the request, which the
result row carries too; ``eval.slots`` joins the two files by key, in order of occurrence (appended runs and
merged shards join line for line). Formats and rules: docs/evaluation.md.
"""
from __future__ import annotations

import fcntl
import json
import os
from typing import List, Optional, Sequence

from .. import environment
from ..core.samples import row_key

ENV_SLOTS = environment.SLOTS_ENV
KEY_FIELD = "coord_row_key"  # what the template's encode adds to an inference request's inputs


def slots_path() -> Optional[str]:
    """The side file named by ``COORD_DECODING_SLOTS`` (absolute), or None when it is not set."""
    return environment.slots_path()


def request_key(inputs) -> Optional[str]:
    """``core.samples.row_key`` of an inference request (an ``InferRequest`` or a row dict)."""
    row = inputs if isinstance(inputs, dict) else getattr(inputs, "__dict__", {})
    return row_key(row)


def append_rows(path: str, keys: Sequence[Optional[str]], slots: Sequence[List[list]]) -> None:
    """Append one line per answer (``keys[i]``, ``slots[i]`` as ``[t, bin, E, std]`` lists) under an exclusive
    lock, so that processes writing one file (the shards of a run) never interleave within a line."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = "".join(json.dumps({"key": k, "slots": s}) + "\n" for k, s in zip(keys, slots))
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(text)
        f.flush()
