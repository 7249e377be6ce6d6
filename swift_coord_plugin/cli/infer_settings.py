"""Helpers of ``shell/eval.sh`` (``python -m swift_coord_plugin.cli.infer_settings ...``).

``write --checkpoint CKPT --out FILE [--max-pixels N] [-- SWIFT_INFER_ARGS...]``
    Decide the inference image resolution and record the inference settings (``infer_settings.json``).
    The resolution is, first found: ``--max_pixels`` among the swift infer arguments, ``--max-pixels``
    (``INFER_MAX_PIXELS``), the ``max_pixels`` the run trained with (the checkpoint's ``args.json``).
    Prints the value eval.sh must pass to ``swift infer`` (empty when the arguments already carry it or
    none is known).
``reuse REPORT DECODE SCORE MAX_DETS [DECODING [INFER_BACKEND]]``
    Exit 0 when ``REPORT`` exists and was scored (and generated) with these settings, 1 otherwise.
``same-checkpoint SETTINGS CKPT``
    ``RESULTS_FROM``: exit 0 when the ``infer_settings.json`` ``SETTINGS`` records the checkpoint ``CKPT``
    (the same directory), 2 with a message naming both when it records another one; a missing file is a
    warning (results not made by eval.sh: the checkpoint cannot be checked) and exit 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ..experiment.provenance import report_matches, train_max_pixels, write_inference_settings


def _from_swift_args(argv: List[str]) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == "--max_pixels" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--max_pixels="):
            return a.split("=", 1)[1]
    return None


def _same_checkpoint(settings_path: str, checkpoint: str) -> int:
    if not os.path.isfile(settings_path):
        print(f"[eval] warning: no {settings_path}: the checkpoint those results were made with is not "
              "recorded, not checked", file=sys.stderr)
        return 0
    with open(settings_path, encoding="utf-8") as f:
        recorded = json.load(f).get("checkpoint")
    if not recorded or os.path.realpath(recorded) != os.path.realpath(checkpoint):
        print(f"[eval] {settings_path} records checkpoint {recorded}, not {checkpoint}: set CKPT to it, or run "
              "that evaluation on this checkpoint first", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    swift_args: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, swift_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m swift_coord_plugin.cli.infer_settings", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--checkpoint", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--max-pixels", default="")
    r = sub.add_parser("reuse")
    r.add_argument("report")
    r.add_argument("decode")
    r.add_argument("score")
    r.add_argument("max_dets", type=int)
    r.add_argument("decoding", nargs="?")
    r.add_argument("infer_backend", nargs="?")
    c = sub.add_parser("same-checkpoint")
    c.add_argument("settings")
    c.add_argument("checkpoint")
    a = p.parse_args(argv)
    if a.cmd == "same-checkpoint":
        return _same_checkpoint(a.settings, a.checkpoint)
    if a.cmd == "reuse":
        return 0 if report_matches(a.report, a.decode, a.score, a.max_dets, a.decoding, a.infer_backend) else 1
    given = _from_swift_args(swift_args)
    if given is not None:  # swift uses it: record it, add nothing
        write_inference_settings(a.out, a.checkpoint, given, "swift infer --max_pixels")
        print("")
        return 0
    if a.max_pixels:
        value, source = a.max_pixels, "INFER_MAX_PIXELS"
    else:
        value = train_max_pixels(a.checkpoint)
        source = "the run's args.json" if value is not None else \
            "unknown (no args.json with max_pixels; ms-swift's default applies)"
    write_inference_settings(a.out, a.checkpoint, value, source)
    print("" if value is None else value)
    return 0

if __name__ == "__main__":
    sys.exit(main())
