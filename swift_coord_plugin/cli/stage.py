"""Stamps of the study's stages (``shell/ablation.sh``): whether a stage already finished with exactly this command.

    python -m swift_coord_plugin.cli.stage check STAMP [--input FILE_OR_DIR ...] -- COMMAND...
    python -m swift_coord_plugin.cli.stage mark STAMP --status started|finished [--input ...] -- COMMAND...

A stamp records the exact command (argument list, environment assignments included), the SHA-256 of each input
file (a folder, e.g. a local model: ``provenance.checkpoint_digest``) and the ``COORD_*``/``COORDEXP_*`` settings
of the environment (``provenance.env_settings``). ``check`` prints one line: ``finished`` or ``started`` (an
interrupted stage with the same command and inputs: resume it) when the stamp matches, ``none`` when there is no
stamp, else ``changed: <what differs>`` (``provenance.reuse_mismatches``, the project's one reuse rule).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

from ..provenance import checkpoint_digest, env_settings, file_sha256, reuse_mismatches

STATUSES = ("started", "finished")


def stage_record(command: List[str], inputs: List[str]) -> Dict[str, object]:
    """What a stage's numbers depend on: ``{"command", "inputs": {path: digest}, "env"}``. Raises
    ``FileNotFoundError`` naming a missing input."""
    digests = {}
    for path in inputs:
        if os.path.isdir(path):
            digests[path] = checkpoint_digest(path)
        elif os.path.isfile(path):
            digests[path] = file_sha256(path)
        else:
            raise FileNotFoundError(f"stage input not found: {path}")
    return {"command": list(command), "inputs": digests, "env": env_settings()}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("stage: give the stage's command after --", file=sys.stderr)
        return 2
    i = argv.index("--")
    argv, command = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m swift_coord_plugin.cli.stage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("check", "mark"))
    p.add_argument("stamp")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--input", action="append", default=[])
    a = p.parse_args(argv)
    try:
        record = stage_record(command, a.input)
    except FileNotFoundError as e:
        if a.action == "mark":
            print(f"stage: {e}", file=sys.stderr)
            return 2
        print(f"changed: {e}")
        return 0
    if a.action == "mark":
        if not a.status:
            print("stage mark: --status started|finished is required", file=sys.stderr)
            return 2
        os.makedirs(os.path.dirname(os.path.abspath(a.stamp)), exist_ok=True)
        with open(a.stamp + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"status": a.status, **record}, f, indent=2)
        os.replace(a.stamp + ".tmp", a.stamp)
        return 0
    if not os.path.isfile(a.stamp):
        print("none")
        return 0
    reasons = reuse_mismatches(a.stamp, record)
    if reasons:
        print("changed: " + "; ".join(reasons))
        return 0
    with open(a.stamp, encoding="utf-8") as f:
        status = json.load(f).get("status")
    print(status if status in STATUSES else f"changed: status {status!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
