"""The pycocotools adapter: standard bbox ``COCOeval`` and what the report takes from it.

``run_cocoeval`` (stats at the run's own max detections, ``coco_stats``), ``METRIC_NAMES``,
``per_category`` / ``per_category_by_id``, ``matched_ious`` and its ``IOU_HIST_EDGES``; ``quiet`` keeps
pycocotools' prints off stdout; ``Evaluation`` is what an evaluation returns. No import from the
rest of ``eval``, so every module there (``gt``, ``plots`` included) can import from here.
"""
from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_HIST_EDGES = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))  # 0.50, 0.55, ..., 1.00


@dataclass
class Evaluation:
    """What ``evaluate_results`` returns: the report, the detections, pycocotools' objects, and the
    normalised GT boxes and matched IoUs the plots draw."""

    report: dict
    detections: List[dict]
    coco_gt: object = None
    coco_eval: object = None
    gt_boxes_norm: List[Sequence[float]] = field(default_factory=list)
    matched_ious: List[float] = field(default_factory=list)


@contextlib.contextmanager
def quiet():
    """pycocotools prints progress on stdout; keep it out of the evaluator's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def run_cocoeval(coco_gt, detections: List[dict], img_ids: Sequence[int], max_dets: int = 100):
    """Standard bbox COCOeval over ``img_ids``; returns the evaluated ``COCOeval`` (stats filled).

    ``detections`` are copied: pycocotools' ``loadRes`` adds keys to the dicts it gets.
    """
    with quiet():
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                               "categories": list(coco_gt.dataset["categories"])}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    ev.stats = coco_stats(ev)
    return ev


def coco_stats(ev) -> np.ndarray:
    """The 12 numbers of ``COCOeval.summarize`` (``METRIC_NAMES`` order), every one at the run's own
    ``maxDets``: AP, AP50, AP75, APs/m/l and ARs/m/l at ``maxDets[-1]``, AR1/AR10/AR<N> at each.

    pycocotools' ``summarize`` takes AP (IoU .50:.95, area all) at a hard-coded 100 detections, so with
    ``maxDets[-1] != 100`` its AP is -1; the formula is otherwise theirs: the mean of
    ``eval['precision'][T, R, K, A, M]`` (101-point interpolated precision) or ``eval['recall'][T, K, A, M]``
    over the entries > -1, -1 when there are none.
    """
    p, e = ev.params, ev.eval

    def mean(ap: bool, iou: Optional[float] = None, area: str = "all", m: int = -1) -> float:
        a = p.areaRngLbl.index(area)
        s = e["precision"][:, :, :, a, m] if ap else e["recall"][:, :, a, m]
        if iou is not None:
            s = s[np.where(iou == p.iouThrs)[0]]
        v = s[s > -1]
        return float(np.mean(v)) if v.size else -1.0

    return np.array([mean(True), mean(True, .5), mean(True, .75), mean(True, area="small"),
                     mean(True, area="medium"), mean(True, area="large"), mean(False, m=0), mean(False, m=1),
                     mean(False), mean(False, area="small"), mean(False, area="medium"),
                     mean(False, area="large")])


def _mean_valid(a: np.ndarray) -> Optional[float]:
    v = a[a > -1]
    return float(np.mean(v)) if v.size else None


def per_category(ev, coco_gt, detections: List[dict]) -> Dict[str, dict]:
    """``{str(category id): {"id", "name", "AP", "AP50", "num_gt", "num_detections"}}``: AP and AP50 (area
    all, max dets) of each category with its GT and detection counts; AP is null for a category without
    GT in the evaluated images. Keyed by id, not name: two categories may share a name (reports written
    before keyed by name; ``per_category_by_id`` reads both)."""
    p = ev.params
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    img_set = set(p.imgIds)
    n_gt = Counter(a["category_id"] for a in coco_gt.dataset["annotations"]
                   if a["image_id"] in img_set and not a.get("iscrowd", 0))
    n_dt = Counter(d["category_id"] for d in detections)
    out = {}
    for k, cid in enumerate(p.catIds):
        out[str(int(cid))] = {"id": int(cid), "name": coco_gt.cats[cid]["name"], "AP": _mean_valid(prec[:, :, k, 0, -1]),
                     "AP50": _mean_valid(prec[0, :, k, 0, -1]), "num_gt": n_gt.get(cid, 0),
                     "num_detections": n_dt.get(cid, 0)}
    return out


def per_category_by_id(report: dict) -> Dict[int, dict]:
    """A report's per-category table as ``{category id: {"id", "name", "AP", ...}}``, whether the report
    keys it by id (now) or by name (reports written before; the name is then taken from the key)."""
    out = {}
    for key, row in (report.get("per_category") or {}).items():
        if not isinstance(row, dict) or row.get("id") is None:
            continue
        out[int(row["id"])] = dict(row, name=row.get("name", key))
    return out


def matched_ious(ev) -> List[float]:
    """IoU of every detection matched to a non-ignored GT box at IoU >= 0.5 (area all, max dets)."""
    p = ev.params
    all_rng, max_det = p.areaRng[0], p.maxDets[-1]
    out = []
    for e in ev.evalImgs:
        if e is None or e["aRng"] != all_rng or e["maxDet"] != max_det:
            continue
        for dt_id, gt_id, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]):
            if gt_id > 0 and not ignored:
                g = ev.cocoGt.anns[int(gt_id)]
                # pycocotools' own box IoU (the one COCOeval matched with; a crowd box's union is the detection)
                iou = mask_utils.iou([ev.cocoDt.anns[dt_id]["bbox"]], [g["bbox"]], [int(bool(g.get("iscrowd", 0)))])
                out.append(float(iou[0][0]))
    return out
