"""coord-compare RUN_A RUN_B RUN_C --out DIR: plots and a summary comparing ablation runs."""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="coord-compare", description=__doc__)
    p.add_argument("runs", nargs="+", help="ms-swift output directories (each with logging.jsonl)")
    p.add_argument("--out", required=True, help="output directory for the PNGs and summary.md/json")
    p.add_argument("--names", nargs="*", help="display names, one per run (default: folder names)")
    p.add_argument("--fraction", type=float, default=0.9,
                   help="convergence = first step covering this fraction of the first-to-final change (0.9)")
    a = p.parse_args(argv)
    if a.names and len(a.names) != len(a.runs):
        p.error(f"--names has {len(a.names)} entries for {len(a.runs)} runs")
    if not 0 < a.fraction <= 1:
        p.error("--fraction must be in (0, 1]")
    from swift_coord_plugin.experiment.compare import compare_runs, format_summary

    summary = compare_runs(a.runs, a.out, a.names, a.fraction)
    print(format_summary(summary))
    print(f"[coord-compare] wrote {a.out}/summary.md, summary.json and {len(summary['plots'])} plot(s)")


if __name__ == "__main__":
    main()
