"""The pictures section (no ms-swift import): AP per category, IoU histograms of matched detections, and a seeded
gallery of evaluation images (GT | each group), drawn with ``figures``.

``draw_gallery`` draws the gallery; ``pictures_section`` returns the ``Section``.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ...eval.inputs import GtImages, detections_on_internal_ids, load_gt
from ...eval.scoring import per_category_by_id
from .. import figures
from .loading import Run
from .render import Section
from .sections import Comparison
from .stats import mean_std

GALLERY_IMAGES = 6


def draw_gallery(c: Comparison, k: int, seed: int) -> List[Tuple[str, str]]:
    """``gallery(...)`` of the comparison's runs into its output folder: ``(caption, relative path)`` per image."""
    return gallery(c.runs, c.groups, c.colors, c.out_dir, k, seed, c.notes)


def gallery(runs: Sequence[Run], groups: Sequence[str], colors: Dict[str, str], out_dir: str, k: int, seed: int,
            notes: List[str]) -> List[Tuple[str, str]]:
    """A seeded sample of evaluation images, the first scored run of each group side by side."""
    reps = []
    for g in groups:
        r = next((r for r in runs if r.group == g and r.report and r.report_dir), None)
        if r is not None:
            reps.append(r)
    if not reps or k <= 0:
        return []
    s = reps[0].report.get("settings") or {}
    gt_path = s.get("gt")
    paths = figures.image_paths_from_results(s.get("results"))
    if not gt_path or not os.path.isfile(gt_path) or not paths:
        notes.append("no gallery: the GT file or the images of the result file are not found")
        return []
    coco_gt = load_gt(gt_path)  # the evaluator's integer image ids, which image_set.ids holds
    images = GtImages(coco_gt)
    paths = {gid: p for gid, p in ((images.internal_id(iid), p) for iid, p in paths.items()) if gid is not None}
    cats = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    gt_by_img: Dict[int, list] = {}
    for a in coco_gt.dataset["annotations"]:
        gt_by_img.setdefault(a["image_id"], []).append((a["bbox"], cats.get(a["category_id"], "?")))
    dets = {}
    for r in reps:
        p = os.path.join(r.report_dir, "detections.json")
        by_img: Dict[int, list] = {}
        if os.path.isfile(p):
            with open(p) as f:
                for d in detections_on_internal_ids(coco_gt, json.load(f), p):
                    by_img.setdefault(d["image_id"], []).append((d["bbox"], cats.get(d["category_id"], "?"),
                                                                 float(d.get("score", 1.0))))
        dets[r.group] = by_img
    ids = sorted(set(paths) & set(((s.get("image_set") or {}).get("ids")) or paths))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(ids, size=min(k, len(ids)), replace=False).tolist()) if ids else []
    os.makedirs(os.path.join(out_dir, "gallery"), exist_ok=True)
    out = []
    for iid in chosen:
        rel = os.path.join("gallery", f"image_{iid}.png")
        name = images.original_id(iid)  # the ground-truth file's id in the captions
        figures.draw_gallery_image(paths[iid], gt_by_img.get(iid, []),
                                   [(r.group, colors[r.group], dets[r.group].get(iid, [])) for r in reps],
                                   os.path.join(out_dir, rel), f"image {name}: {len(gt_by_img.get(iid, []))} GT boxes")
        out.append((f"image {name}", rel))
    return out


def pictures_section(comp: Comparison, images: Sequence[Tuple[str, str]]) -> Section:
    """6. AP per category (the 20 with most GT boxes), the IoU histograms, and the gallery ``images`` already drawn
    (``draw_gallery``)."""
    runs, groups, colors, plots, out_dir = comp.runs, comp.groups, comp.colors, comp.plots, comp.out_dir
    by_group = comp.by_group
    sec = Section("Per category, IoU of matches, gallery")
    # keyed by category id (reports before keyed it by name; per_category_by_id reads both)
    tables = {id(r): per_category_by_id(r.report or {}) for r in runs}
    cat_gt: Dict[int, int] = {}
    cat_name: Dict[int, str] = {}
    for table in tables.values():
        for cid, c in table.items():
            cat_gt[cid] = max(cat_gt.get(cid, 0), int(c.get("num_gt") or 0))
            cat_name.setdefault(cid, str(c["name"]))
    top = [c for c, n in sorted(cat_gt.items(), key=lambda kv: -kv[1]) if n > 0][:20]
    shared = {n for n in cat_name.values() if list(cat_name.values()).count(n) > 1}
    label = {c: cat_name[c] + (f" ({c})" if cat_name[c] in shared else "") for c in top}
    cats = [label[c] for c in top]
    if cats:
        cmean = {g: {} for g in groups}
        cstd = {g: {} for g in groups}
        for g, rs in by_group.items():
            for c in top:
                cmean[g][label[c]], cstd[g][label[c]], _ = mean_std([tables[id(r)].get(c, {}).get("AP") for r in rs])
        png = os.path.join(out_dir, "per_category_ap.png")
        drawn = figures.plot_metric_bars(groups, colors, cats, cmean, cstd, png,
                                         f"AP per category ({len(cats)} with most GT boxes)", "AP")
        sec.figure(drawn, png, "per_category_ap", "AP per category", plots)
    png = os.path.join(out_dir, "iou_histograms.png")
    hists = [(r.name, colors[r.group], (r.report.get("matched_iou") or {}).get("histogram_edges") or [],
              (r.report.get("matched_iou") or {}).get("histogram") or []) for r in runs if r.report]
    sec.figure(figures.plot_iou_histograms(hists, png), png, "iou_histograms", "IoU of matched detections", plots)
    for caption, rel in images:
        sec.image(caption, rel)
    if not sec.images:
        sec.text("No evaluation to draw.")
    return sec
