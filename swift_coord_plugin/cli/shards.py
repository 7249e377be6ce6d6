"""Shards of a validation file for ``swift infer``, and the merge/check of their result files
(``shell/eval.sh`` runs it as ``python -m swift_coord_plugin.cli.shards``; library: ``eval.shards``).

    python -m swift_coord_plugin.cli.shards split --val VAL.jsonl --n 4 --out-dir DIR   # prints shard paths
    python -m swift_coord_plugin.cli.shards merge --val VAL.jsonl --out infer_result.jsonl R0.jsonl R1.jsonl ...
    python -m swift_coord_plugin.cli.shards check --val VAL.jsonl infer_result.jsonl
    python -m swift_coord_plugin.cli.shards progress --shards S0.jsonl S1.jsonl --results R0.jsonl R1.jsonl \
        [--rows-done | --elapsed SECONDS --baseline ROWS]    # one line: rows done, rate, time left

``merge`` and ``check`` exit with code 2 and name the missing, duplicated or foreign rows unless the results
hold every row of VAL.jsonl exactly once.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..eval.shards import ShardError, check_results, count_rows, progress_line, split_samples


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m swift_coord_plugin.cli.shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="write contiguous shards of the validation samples")
    s.add_argument("--val", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--out-dir", required=True)
    m = sub.add_parser("merge", help="concatenate result files after checking them against --val")
    m.add_argument("--val", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("results", nargs="+")
    c = sub.add_parser("check", help="check result files against --val")
    c.add_argument("--val", required=True)
    c.add_argument("results", nargs="+")
    g = sub.add_parser("progress", help="one line on the rows written so far across shards")
    g.add_argument("--shards", nargs="+", required=True)
    g.add_argument("--results", nargs="+", required=True)
    g.add_argument("--rows-done", action="store_true", help="print only the number of rows written")
    g.add_argument("--elapsed", type=float, default=0.0, help="seconds since the shards started")
    g.add_argument("--baseline", type=int, default=0, help="rows already written when they started")
    args = p.parse_args(argv)
    if args.cmd == "progress":
        done = sum(count_rows(r) for r in args.results)
        print(done if args.rows_done else
              progress_line(done, sum(count_rows(s) for s in args.shards), args.elapsed, args.baseline), flush=True)
        return 0
    try:
        if args.cmd == "split":
            print("\n".join(split_samples(args.val, args.n, args.out_dir)))
            return 0
        counts = check_results(args.results, args.val, args.out if args.cmd == "merge" else None)
    except (ShardError, OSError) as e:
        print(f"[shards] error: {e}", file=sys.stderr)
        return 2
    done = f"wrote {args.out}" if args.cmd == "merge" else "checked"
    print(f"[shards] {done}: {counts['results']} result rows = the {counts['requested']} rows of {args.val}, "
          "each exactly once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
