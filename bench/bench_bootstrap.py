"""Benchmark of the paired bootstrap over images (eval/bootstrap.py) at COCO val2017's size.

Two runs on the same ~5k images (coco128 replicated ``--copies`` times under new ids, as bench_eval.py
does): each GT box jittered by a few pixels (run A: ``--jitter-a``, run C: ``--jitter-c``), a random score,
and one false positive per four boxes. Timed: COCOeval (evaluate + accumulate, once per run, what
coord-eval already pays), the extraction of the per-image matches from ``evalImgs``, and the bootstrap
of ``--resamples`` replicates (AP, AP50, AP75 of both runs and their difference).

Usage: ``python bench/bench_bootstrap.py [--copies 40] [--resamples 1000]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import DEFAULT_GT, replicate  # noqa: E402
from machine import cpu_name  # noqa: E402

from swift_coord_plugin.eval.bootstrap import PerImageMatches, paired_bootstrap  # noqa: E402
from swift_coord_plugin.eval.scoring import run_cocoeval  # noqa: E402


def detections(gt: dict, jitter: float, seed: int) -> list:
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    out = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        j = rng.uniform(-jitter, jitter, 4)
        out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                    "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                    "score": float(rng.uniform(0.05, 1))})
        if rng.uniform() < 0.25:
            out.append({"image_id": a["image_id"], "category_id": int(rng.choice(cats)),
                        "bbox": [float(rng.uniform(0, 400)), float(rng.uniform(0, 300)), 40.0, 40.0],
                        "score": float(rng.uniform(0.05, 1))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco128", default=str(DEFAULT_GT))
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--jitter-a", type=float, default=6.0)
    ap.add_argument("--jitter-c", type=float, default=4.0)
    args = ap.parse_args()
    from pycocotools.coco import COCO

    with open(args.coco128) as f:
        gt = replicate(json.load(f), args.copies)
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    ids = [i["id"] for i in gt["images"]]
    print(f"# {len(ids)} images, {len(gt['annotations'])} GT boxes; {cpu_name()}, Python {sys.version.split()[0]}")
    matches, rows = {}, []
    for name, jitter, seed in (("A", args.jitter_a, 1), ("C", args.jitter_c, 2)):
        dets = detections(gt, jitter, seed)
        t0, c0 = time.perf_counter(), time.process_time()
        ev = run_cocoeval(coco, dets, ids)
        t1, c1 = time.perf_counter(), time.process_time()
        matches[name] = [PerImageMatches.from_cocoeval(ev)]
        t2, c2 = time.perf_counter(), time.process_time()
        rows.append(f"| {name} | {len(dets)} | {ev.stats[0]:.4f} | {t1 - t0:.1f} / {c1 - c0:.1f} | "
                    f"{t2 - t1:.1f} / {c2 - c1:.1f} |")
    print("| run | detections | AP | COCOeval s (wall / CPU) | per-image matches s (wall / CPU) |\n"
          "|---|---|---|---|---|")
    print("\n".join(rows))
    t0, c0 = time.perf_counter(), time.process_time()
    out = paired_bootstrap(matches, "A", n_resamples=args.resamples, seed=0)
    t, c = time.perf_counter() - t0, time.process_time() - c0
    d = out["C"]["diff"]
    print(f"\nbootstrap, {args.resamples} resamples, 2 runs: {t:.1f} s wall, {c:.1f} s CPU "
          f"({1000 * c / args.resamples / 2:.1f} ms CPU per run and replicate)")
    for m in ("AP", "AP50", "AP75"):
        print(f"C - A {m}: {d[m]['value']:+.4f}, 95% CI [{d[m]['ci'][0]:+.4f}, {d[m]['ci'][1]:+.4f}]; "
              f"A {m} CI [{out['A'][m]['ci'][0]:.4f}, {out['A'][m]['ci'][1]:.4f}]")


if __name__ == "__main__":
    main()
