"""coord-compare RUN_A RUN_B RUN_C --out DIR: a comparison of ablation runs (summary.md, index.html, PNGs)."""
# ``experiment.compare`` is imported after the arguments are parsed: it loads torch and scipy (several seconds),
# which ``--help`` and a usage error do not need.
from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--eval", dest="eval_name", metavar="NAME",
                   help="compare evaluation NAME of each run (shell/eval.sh EVAL_NAME=NAME: RUN/eval/NAME/; 'default': "
                        "RUN/eval/ itself); default: every evaluation found, one row each in the metrics table")
    p.add_argument("--select-on", metavar="NAME",
                   help="choose each run's checkpoint by its highest AP in evaluation NAME (scored with CKPT=all on a "
                        "held-out selection split) and read the compared evaluations at that checkpoint; the summary "
                        "flags a choice made on the scored images as test-set selection")
    p.add_argument("--reference", action="append", default=[], metavar="LABEL=REPORT",
                   help="an untrained predictor's coord-eval report.json shown beside the groups (repeatable), e.g. "
                        "the constant predictor of coord-constant-baseline")
    p.add_argument("--data-summary", metavar="SUMMARY_JSON",
                   help="the data the study ran on (coord-make-shapes summary.json), shown first")
    a = p.parse_args(argv)
    refs = []
    for spec in a.reference:
        label, sep, path = spec.rpartition("=")
        if not sep or not label or not path:
            p.error(f"--reference {spec!r}: expected LABEL=REPORT")
        refs.append((label, path))
    if a.names and len(a.names) != len(a.runs):
        p.error(f"--names has {len(a.names)} entries for {len(a.runs)} runs")
    if not 0 < a.fraction <= 1:
        p.error("--fraction must be in (0, 1]")
    if a.bootstrap < 0 or a.gallery < 0:
        p.error("--bootstrap and --gallery must be >= 0")
    from swift_coord_plugin.experiment.compare import compare_runs, format_summary

    try:
        summary = compare_runs(a.runs, a.out, a.names, a.fraction, n_resamples=a.bootstrap, seed=a.seed,
                               gallery_images=a.gallery, eval_name=a.eval_name, select_on=a.select_on,
                               references=refs, data_summary=a.data_summary)
    except (FileNotFoundError, ValueError) as e:
        print(f"coord-compare: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(summary))
    print(f"[coord-compare] wrote {a.out}/summary.md, index.html, summary.json, {len(summary['plots'])} plot(s) and "
          f"{len(summary['gallery'])} gallery image(s)")


if __name__ == "__main__":
    main()
