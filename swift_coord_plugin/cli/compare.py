"""coord-compare RUN_A RUN_B RUN_C --out DIR: a comparison of ablation runs (summary.md, index.html, PNGs)."""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="coord-compare", description=__doc__)
    p.add_argument("runs", nargs="+", help="ms-swift output directories (each with logging.jsonl)")
    p.add_argument("--out", required=True, help="output directory for summary.md/json, index.html and the PNGs")
    p.add_argument("--names", nargs="*",
                   help="display names, one per run (default: folder names); runs with the same name are seeds of "
                        "one group (the first group is the baseline of the differences)")
    p.add_argument("--fraction", type=float, default=0.9,
                   help="convergence = first step reaching this fraction of the best value any run reached on a "
                        "common yardstick (0.9)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap replicates for the AP intervals (two levels: each group's runs, then the images, "
                        "paired across groups; 1000; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the gallery's image sample (0)")
    p.add_argument("--gallery", type=int, default=6, help="evaluation images drawn side by side per group (6)")
    a = p.parse_args(argv)
    if a.names and len(a.names) != len(a.runs):
        p.error(f"--names has {len(a.names)} entries for {len(a.runs)} runs")
    if not 0 < a.fraction <= 1:
        p.error("--fraction must be in (0, 1]")
    if a.bootstrap < 0 or a.gallery < 0:
        p.error("--bootstrap and --gallery must be >= 0")
    from swift_coord_plugin.experiment.compare import compare_runs, format_summary

    summary = compare_runs(a.runs, a.out, a.names, a.fraction, n_resamples=a.bootstrap, seed=a.seed,
                           gallery_images=a.gallery)
    print(format_summary(summary))
    print(f"[coord-compare] wrote {a.out}/summary.md, index.html, summary.json, {len(summary['plots'])} plot(s) and "
          f"{len(summary['gallery'])} gallery image(s)")


if __name__ == "__main__":
    main()
