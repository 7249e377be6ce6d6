"""How the detection score ranks: held-out AP of the same answers under each ``coord-eval --score`` rule.

COCO AP depends on how detections are ranked, not only on where the boxes are. This re-scores one result file per
run (no inference) with ``--score logprob`` (geometric mean of the 4 coordinate tokens' probabilities),
``spread`` (``1 / (1 + mean std in bins)`` of the 4 restricted coordinate distributions, from the slots file) and
``constant``, under ``--decode argmax`` and ``--decode coordexp``, and prints AP / AP50 / AP75 per run:

    python bench/score_rules.py --gt output/demo/data/shapes/annotations/instances_val.json \
        A=output/demo/group_a/eval/argmax/checkpoint-600/infer_result.jsonl \
        B=output/demo/group_b/eval/argmax/checkpoint-600/infer_result.jsonl \
        C=output/demo/group_c/eval/argmax/checkpoint-600/infer_result.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from machine import torch_machine  # bench/machine.py (the script's folder is on sys.path)

SCORES = ("logprob", "spread", "constant")
DECODES = ("argmax", "coordexp")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gt", required=True, help="COCO instances JSON of the scored images")
    p.add_argument("runs", nargs="+", help="LABEL=RESULTS (a swift infer result file with its .slots.jsonl)")
    a = p.parse_args(argv)
    exe = os.path.join(os.path.dirname(sys.executable), "coord-eval")
    print(f"# Held-out AP of the same answers under each score rule\n\n`python bench/score_rules.py --gt {a.gt} "
          f"{' '.join(a.runs)}` on {torch_machine()}\n")
    print("| run | decode | " + " | ".join(f"{s}: AP / AP50 / AP75" for s in SCORES) + " |")
    print("|---|---|" + "---|" * len(SCORES))
    for run in a.runs:
        label, _, results = run.partition("=")
        for decode in DECODES:
            cells = []
            for score in SCORES:
                with tempfile.TemporaryDirectory() as out:
                    proc = subprocess.run([exe, "--results", results, "--gt", a.gt, "--out", out, "--decode", decode,
                                           "--score", score, "--subset-from-results", "--no-progress"],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    if proc.returncode != 0:
                        print(proc.stderr[-2000:], file=sys.stderr)
                        return proc.returncode
                    m = json.load(open(os.path.join(out, "report.json")))["metrics"]
                cells.append(f"{m['AP']:.3f} / {m['AP50']:.3f} / {m['AP75']:.3f}")
            print(f"| {label} | {decode} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
