"""Cost of the two-level bootstrap (seeds, then images) at 5,000 images x 3 seeds x 3 groups.

The runs are synthetic ``PerImageMatches`` (no COCOeval: its matching is what coord-eval already pays, see
bench_bootstrap.py), shaped like a COCO val2017 evaluation: ``--images`` images, ``--categories``
categories, about ``--detections`` detections per run spread over the categories and images, per IoU
threshold a true-positive share falling from 0.8 at IoU 0.5 to 0.2 at 0.95, 7 GT boxes per image on average.
Each group's runs differ in their matches (another random draw per run), and group ``g`` is a little better
than the previous one.

Timed, in CPU seconds: ``paired_bootstrap`` (the replicated AP, AP50 and AP75 of every run at the shared image
weights, then the seed level and the intervals of every group and difference), and separately the seed level
and intervals alone (``two_level_interval`` on the already replicated metrics).

Usage: ``python bench/bench_bootstrap_seeds.py [--images 5000] [--seeds 3] [--groups 3] [--resamples 1000]``
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_name  # noqa: E402

from swift_coord_plugin.eval.bootstrap import (  # noqa: E402
    BOOTSTRAP_METRICS, GroupReplicates, PerImageMatches, _Category, paired_bootstrap, resample_weights,
    two_level_interval)

IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)


def synthetic_run(n_images: int, n_cats: int, n_dets: int, quality: float, rng) -> PerImageMatches:
    """Matches of one run: per category, detections on random images in score order, nested true positives
    over the IoU thresholds (a match at IoU t is a match at every lower threshold)."""
    cats = []
    gt_per_cat = rng.poisson(7.0 / n_cats, size=(n_cats, n_images)).astype(np.float64)
    for k in range(n_cats):
        d = max(1, int(rng.poisson(n_dets / n_cats)))
        img = rng.integers(0, n_images, d)
        iou = rng.beta(4 * quality, 2, d)                                  # the detection's IoU with its match
        tp = (iou[None, :] >= IOU_THRS[:, None]).astype(np.float64)       # [T, D]
        tp[:, rng.uniform(size=d) < 0.25] = 0.0                            # unmatched detections
        cats.append(_Category(img=img, tp=tp, fp=1.0 - tp, npig=gt_per_cat[k]))
    return PerImageMatches(image_ids=list(range(1, n_images + 1)), iou_thrs=IOU_THRS, rec_thrs=REC_THRS,
                           categories=cats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--categories", type=int, default=80)
    ap.add_argument("--detections", type=int, default=47000, help="per run")
    ap.add_argument("--seeds", type=int, default=3, help="runs per group")
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--resamples", type=int, default=1000)
    a = ap.parse_args()
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, numpy {np.__version__}, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    groups = {f"G{g}": [synthetic_run(a.images, a.categories, a.detections, 1.0 + 0.05 * g, rng)
                        for _ in range(a.seeds)] for g in range(a.groups)}
    n_det = sum(c.img.shape[0] for c in groups["G0"][0].categories)
    print(f"{a.groups} groups x {a.seeds} runs, {a.images} images, {a.categories} categories, "
          f"{n_det} detections in the first run; B = {a.resamples}")
    w0, c0 = time.perf_counter(), time.process_time()
    out = paired_bootstrap(groups, "G0", n_resamples=a.resamples, seed=0)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n_runs = a.groups * a.seeds
    print(f"paired_bootstrap (two-level): {wall:.1f} s wall, {cpu:.1f} s CPU; "
          f"{1000 * cpu / a.resamples / n_runs:.1f} ms CPU per run and replicate")
    # The seed level and the intervals alone, on replicated metrics of the same shape.
    reps = {g: GroupReplicates(values=rng.uniform(0.3, 0.4, a.seeds),
                               replicates=rng.uniform(0.3, 0.4, (a.seeds, a.resamples)),
                               seed_counts=resample_weights(a.seeds, a.resamples, (0, 1, j)))
            for j, g in enumerate(groups)}
    c0 = time.process_time()
    names = list(groups)
    for m in BOOTSTRAP_METRICS:
        for i, g in enumerate(names):
            two_level_interval([(1.0, reps[g])])
            for o in names[:i]:
                two_level_interval([(1.0, reps[g]), (-1.0, reps[o])])
    print(f"seed level and intervals alone (every group and pair, 3 metrics): {time.process_time() - c0:.3f} s CPU")
    for g in names[1:]:
        d = out[g]["diff"]["AP"]
        print(f"{g} - G0 AP {d['value']:+.4f}: 95% CI images and seeds [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}], "
              f"images only [{d['ci_images'][0]:+.4f}, {d['ci_images'][1]:+.4f}] (df {d['df']:.1f}, seed scale "
              f"{d['seed_scale']:.2f})")


if __name__ == "__main__":
    main()
