"""Statistics of the comparison (no ms-swift import): convergence on the common yardsticks, the two-level
bootstrap of the groups (``eval.bootstrap``), mean ± std over seeds and the number formats of the tables.
"""
from __future__ import annotations

import json
import math
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ...core.yardsticks import COMMON_CURVES
from ...eval.bootstrap import PerImageMatches, interval_covers, paired_bootstrap
from ...eval.inputs import detections_on_internal_ids
from ...eval.scoring import load_gt, run_cocoeval
from ...provenance import file_sha256
from .loading import Run, common_curve

DEFAULT_FRACTION = 0.9


def steps_to_level(xs: Sequence[int], ys: Sequence[float], target: float, higher_is_better: bool) -> Optional[int]:
    """First step whose value reaches ``target`` (>= for higher-is-better, <= otherwise); None if never."""
    for x, y in zip(xs, ys):
        if (y >= target) if higher_is_better else (y <= target):
            return x
    return None


def convergence(runs: Sequence[Run], fraction: float = DEFAULT_FRACTION) -> List[dict]:
    """Per common yardstick: the best value any run reached, the target level (``fraction * best``, or
    ``best / fraction`` for an error) and per run the first step reaching it, its best and final value."""
    out = []
    for name, higher in COMMON_CURVES:
        per = {r.name: common_curve(r, name) for r in runs}
        values = [y for xs, ys, _ in per.values() for y in ys]
        if not values:
            continue
        best = max(values) if higher else min(values)
        # No run above 0 on a higher-is-better yardstick: nothing was reached, no convergence to report.
        target = None if higher and best <= 0 else (fraction * best if higher else best / fraction)
        row = {"curve": name, "logged_as": sorted({k for _, _, k in per.values() if _}), "higher_is_better": higher,
               "best": best, "best_run": next(n for n, (xs, ys, _) in per.items() if best in ys),
               "target": target, "runs": {}}
        for n, (xs, ys, _) in per.items():
            row["runs"][n] = {"step": steps_to_level(xs, ys, target, higher) if ys and target is not None else None,
                              "best": (max(ys) if higher else min(ys)) if ys else None,
                              "final": ys[-1] if ys else None}
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- aggregation
def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    v = [float(x) for x in values if isinstance(x, (int, float)) and x is not None and math.isfinite(x) and x >= 0]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None), len(v)


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_pm(mean, std, digits: int = 4) -> str:
    if mean is None:
        return "-"
    return fmt(mean, digits) + (f" ± {std:.{digits}f}" if std is not None else "")


def fmt_ci(ci, digits: int = 4) -> str:
    if not ci or ci[0] is None:
        return "-"
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


# ---------------------------------------------------------------------------------------------- bootstrap
def _per_image_matches(run: Run, notes: List[str]):
    s = (run.report or {}).get("settings") or {}
    gt, ids = s.get("gt"), (s.get("image_set") or {}).get("ids")
    dets_path = os.path.join(run.report_dir or "", "detections.json")
    if not gt or not os.path.isfile(gt) or ids is None or not os.path.isfile(dets_path):
        notes.append(f"{run.name}: no bootstrap (needs report.json with settings.gt, settings.image_set.ids and "
                     "detections.json next to it; re-score with this coord-eval)")
        return None
    if s.get("gt_sha256") and file_sha256(gt) != s["gt_sha256"]:
        notes.append(f"{run.name}: no bootstrap (the GT file {gt} changed since it was scored)")
        return None
    with open(dets_path) as f:
        dets = json.load(f)
    coco_gt = load_gt(gt)
    dets = detections_on_internal_ids(coco_gt, dets, dets_path)  # detections.json carries the file's own ids
    ev = run_cocoeval(coco_gt, dets, ids, int(s.get("max_dets", 100)))
    return PerImageMatches.from_cocoeval(ev)


def bootstrap_groups(runs: Sequence[Run], groups: Sequence[str], n_resamples: int, seed: int,
                     notes: List[str]) -> Optional[dict]:
    scored = {g: [r for r in runs if r.group == g and r.report] for g in groups}
    scored = {g: rs for g, rs in scored.items() if rs}
    if len(scored) < 1:
        return None
    matches = {}
    for g, rs in scored.items():
        pims = [_per_image_matches(r, notes) for r in rs]
        if any(p is None for p in pims):
            continue
        matches[g] = pims
    baseline = next((g for g in groups if g in matches), None)
    if baseline is None:
        return None
    ref = matches[baseline][0].image_ids
    for g in list(matches):
        if any(p.image_ids != ref for p in matches[g]):
            notes.append(f"{g}: no paired bootstrap against {baseline} (scored on other images)")
            del matches[g]
    out = paired_bootstrap(matches, baseline, n_resamples=n_resamples, seed=seed)
    n_seeds = {g: len(p) for g, p in matches.items()}
    single = [g for g, n in n_seeds.items() if n < 2]
    covers = interval_covers(list(n_seeds.items()))
    if len(single) == len(n_seeds):
        headline = ("**The intervals cover image sampling only**: every group has one run, so the noise of "
                    "training (seed: initialisation, data order) is in no interval and a difference can be seed "
                    "noise; train several seeds per group to include it (docs/comparison.md).")
    elif not single:
        headline = ("**The intervals cover image sampling and training seeds**: a two-level bootstrap (the runs "
                    "of each group, then the images, paired across groups) with a small-sample correction for "
                    f"{'/'.join(str(n) for n in n_seeds.values())} seeds per group (docs/comparison.md).")
    else:
        headline = ("**The intervals cover image sampling, and training seeds only for the groups with several "
                    f"runs**: {', '.join(single)} {'has' if len(single) == 1 else 'have'} one run, whose seed noise "
                    "is in no interval (docs/comparison.md).")
    return {"baseline": baseline, "n_resamples": n_resamples, "seed": seed, "alpha": 0.05,
            "n_images": len(ref), "n_seeds": n_seeds, "covers": covers, "headline": headline, "groups": out}

