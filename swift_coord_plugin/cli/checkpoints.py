"""The ``checkpoint-N`` folders of a run folder in step order, one path a line (``shell/eval.sh`` and
``shell/ablation.sh`` run it as ``python -m swift_coord_plugin.cli.checkpoints``; library:
``provenance.list_checkpoints``).

    python -m swift_coord_plugin.cli.checkpoints OUT           # every checkpoint-N of OUT, N ascending
    python -m swift_coord_plugin.cli.checkpoints OUT --last    # the last one only

Exits with code 1, printing nothing, when OUT holds no ``checkpoint-N`` folder (or does not exist); the
calling script says so in its own words.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from swift_coord_plugin.provenance import list_checkpoints


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m swift_coord_plugin.cli.checkpoints", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a training output folder (ms-swift's output_dir)")
    p.add_argument("--last", action="store_true", help="print only the checkpoint with the largest step")
    args = p.parse_args(argv)
    found = list_checkpoints(args.run_dir)
    if not found:
        return 1
    for path in found[-1:] if args.last else found:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
