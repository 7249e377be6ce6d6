"""How a result file was decoded: the decoding mode and inference backend that ``coord-eval`` reports.

Sources, in order: the ``--decoding`` / ``--infer-backend`` flags, and the record the plugin writes at
inference time when ``COORD_DECODING_RECORD`` names a file (``shell/eval.sh`` sets it to
``<results>.decoding.json``, the file looked for here). A flag that contradicts the record is an error;
with neither, both are reported as ``"unknown"`` with a warning, never left out.

A record that counts answers which left the grammar (``off_grammar_rows`` > 0: a token the grammar forbids
was appended by something other than the grammar, and the answer was ended there) is refused: those results
are not what the recorded decoding mode produces.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Tuple

from ..data import textfiles

DECODINGS = ("free", "constrained", "coordexp")
OFF_GRAMMAR_KEY = "off_grammar_rows"  # answers that left the grammar (written by swift_ext.decoding)
BACKENDS = ("transformers", "vllm")
UNKNOWN = "unknown"


class DecodingInfoError(ValueError):
    pass


def record_path(results_path: str) -> str:
    """Where the inference record of ``results_path`` lies: ``<results>.decoding.json``."""
    return f"{results_path}.decoding.json"


def read_record(results_path: str) -> Optional[dict]:
    path = record_path(results_path)
    if not os.path.isfile(path):
        return None
    try:
        rec = json.loads(textfiles.read_text(path))
    except (OSError, ValueError) as e:
        raise DecodingInfoError(f"{path}: unreadable decoding record: {e}") from e
    if not isinstance(rec, dict) or rec.get("decoding") not in DECODINGS or rec.get("infer_backend") not in BACKENDS:
        raise DecodingInfoError(f"{path}: expected decoding in {DECODINGS} and infer_backend in {BACKENDS}, "
                                f"got {rec!r}")
    off = rec.get(OFF_GRAMMAR_KEY, 0)
    if not isinstance(off, int) or isinstance(off, bool) or off < 0:
        raise DecodingInfoError(f"{path}: {OFF_GRAMMAR_KEY} must be a count >= 0, got {off!r}")
    if off:
        raise DecodingInfoError(f"{path}: {off} answer(s) left the answer grammar during inference "
                                f"({OFF_GRAMMAR_KEY}; the inference log names each): these results were not all "
                                f"decoded under {rec['decoding']}, so they are not scored; find what appended "
                                "tokens outside the grammar and run inference again")
    return rec


def resolve(results_path: str, decoding: Optional[str], backend: Optional[str]) -> Tuple[dict, Optional[str]]:
    """The ``settings`` entries about decoding, and a warning when they are unknown.

    Returns ``({"decoding", "infer_backend", "decoding_source", "logprobs_distribution"}, warning)``.
    Raises ``DecodingInfoError`` when a flag contradicts the record or names an unknown value.
    """
    if decoding is not None and decoding not in DECODINGS:
        raise DecodingInfoError(f"--decoding {decoding!r}: expected one of {', '.join(DECODINGS)}")
    if backend is not None and backend not in BACKENDS:
        raise DecodingInfoError(f"--infer-backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    rec = read_record(results_path)
    sources = []
    if rec is not None:
        for flag, given, key in (("--decoding", decoding, "decoding"), ("--infer-backend", backend, "infer_backend")):
            if given is not None and given != rec[key]:
                raise DecodingInfoError(f"{flag} {given} contradicts {record_path(results_path)} "
                                        f"({key}: {rec[key]})")
        decoding, backend = rec["decoding"], rec["infer_backend"]
        sources.append(record_path(results_path))
    elif decoding is not None or backend is not None:
        sources.append("command line")
    out = {"decoding": decoding or UNKNOWN, "infer_backend": backend or UNKNOWN,
           "decoding_source": ", ".join(sources) or "not recorded",
           "logprobs_distribution": (rec or {}).get("logprobs") or UNKNOWN}
    warning = None
    if UNKNOWN in (out["decoding"], out["infer_backend"]):
        warning = (f"the decoding mode / backend of {results_path} is not recorded (no "
                   f"{os.path.basename(record_path(results_path))}): pass --decoding and --infer-backend; "
                   "reported as unknown")
    return out, warning
