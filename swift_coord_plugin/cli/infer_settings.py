"""Helpers of ``shell/eval.sh`` (``python -m swift_coord_plugin.cli.infer_settings ...``).

Public: ``resolve_max_pixels``, ``main``. Design notes: ``docs/design/cli_infer_settings.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Tuple

from .. import environment
from ..eval.shards import ShardError, check_results
from ..provenance import (evaluation_wanted, file_sha256, inference_identity,
                                     reuse_mismatches, train_max_pixels, write_inference_settings)


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


def resolve_max_pixels(checkpoint: str, infer_max_pixels: str, swift_args: List[str]) -> Tuple[Optional[str], str, bool]:
    """(value, where it came from, whether swift's own flags carry it) of the inference resolution."""
    given = _from_swift_args(swift_args)
    if given is not None:
        return given, "swift infer --max_pixels", True
    if infer_max_pixels:
        return infer_max_pixels, "INFER_MAX_PIXELS", False
    value = train_max_pixels(checkpoint)
    return (None if value is None else str(value),
            "the run's args.json" if value is not None else
            "unknown (no args.json with max_pixels; ms-swift's default applies)", False)


def _identity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-data", default=None)
    p.add_argument("--infer-config", default=None)
    p.add_argument("--decoding", default=None)
    p.add_argument("--infer-backend", default=None)
    p.add_argument("--eval-args", default="")


def _identity(a, swift_args: List[str]) -> dict:
    # eval.sh exports COORD_DECODING=DECODING before it writes the record: the same environment is asked here.
    environ = dict(environment.current(), **({"COORD_DECODING": a.decoding} if a.decoding else {}))
    return dict(decoding=a.decoding, infer_backend=a.infer_backend, val_data=a.val_data,
                infer_config=a.infer_config, swift_args=swift_args, environ=environ)


def _shard_wanted(settings_path: str, gt: str, shard: str) -> dict:
    with open(settings_path, encoding="utf-8") as f:
        inference = json.load(f)
    inference = dict(inference, val_data_sha256=file_sha256(shard))
    return evaluation_wanted(inference, file_sha256(gt))


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
    _identity_options(w)
    r = sub.add_parser("reuse")
    r.add_argument("report")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--gt", required=True)
    r.add_argument("--decode", required=True)
    r.add_argument("--score", required=True)
    r.add_argument("--max-dets", type=int, required=True)
    r.add_argument("--max-pixels", default="")
    r.add_argument("--inference-from", default=None,
                   help="re-scoring another evaluation's answers: its infer_settings.json gives the inference side "
                        "(the checkpoint's identity is still taken from --checkpoint)")
    _identity_options(r)
    for name in ("shard-stamp", "shard-reuse"):
        s = sub.add_parser(name)
        if name == "shard-reuse":
            s.add_argument("stamp")
            s.add_argument("--result", required=True)
        else:
            s.add_argument("--out", required=True)
        s.add_argument("--settings", required=True)
        s.add_argument("--gt", required=True)
        s.add_argument("--shard", required=True)
    c = sub.add_parser("same-checkpoint")
    c.add_argument("settings")
    c.add_argument("checkpoint")
    a = p.parse_args(argv)
    if a.cmd == "same-checkpoint":
        return _same_checkpoint(a.settings, a.checkpoint)
    if a.cmd == "shard-stamp":
        stamp = {}
        for key, value in _shard_wanted(a.settings, a.gt, a.shard).items():
            d = stamp
            *parents, last = key.split(".")
            for part in parents:
                d = d.setdefault(part, {})
            d[last] = value
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(stamp, f, indent=2)
        return 0
    if a.cmd == "shard-reuse":
        reasons = reuse_mismatches(a.stamp, _shard_wanted(a.settings, a.gt, a.shard))
        if not reasons:
            try:
                check_results([a.result], a.shard)
            except (ShardError, OSError) as e:
                reasons = [f"incomplete: {str(e).splitlines()[-1].strip()}"]
        print("; ".join(reasons))
        return 1 if reasons else 0
    value, source, in_swift_args = resolve_max_pixels(a.checkpoint, a.max_pixels, swift_args)
    if a.cmd == "reuse":
        if not os.path.isfile(a.report):
            print(f"no report yet ({a.report})")
            return 1
        try:
            inference = inference_identity(a.checkpoint, value, **_identity(a, swift_args))
            if a.inference_from:  # no inference of its own: the answers' record, for this checkpoint
                with open(a.inference_from, encoding="utf-8") as f:
                    inference = dict(json.load(f), checkpoint_digest=inference["checkpoint_digest"],
                                     checkpoint_step=inference["checkpoint_step"])
            wanted = evaluation_wanted(inference, file_sha256(a.gt), decode=a.decode, score=a.score,
                                       max_dets=a.max_dets, coord_eval_args=a.eval_args)
        except FileNotFoundError as e:
            print(f"cannot check: {e}")
            return 1
        reasons = reuse_mismatches(a.report, wanted)
        print("; ".join(reasons))
        return 1 if reasons else 0
    write_inference_settings(a.out, a.checkpoint, value, source, coord_eval_args=a.eval_args,
                             **_identity(a, swift_args))
    print("" if in_swift_args or value is None else value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
