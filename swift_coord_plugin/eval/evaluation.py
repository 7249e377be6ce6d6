"""``evaluate_results``: results and ground truth -> COCO detections -> COCOeval -> ``Evaluation``.

It reads the inputs (``eval.inputs``), runs the row pass (``eval.tally``), decides which images are
scored (``_coverage``: a missing row is an error unless a subset was asked for), scores them
(``eval.pycoco``) and builds the report (``eval.report``).
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional

from ..core import codec
from ..data.descriptions import AmbiguousCategoriesError
from ..provenance import evaluation_provenance
from .categories import CategoryMapper
from .inputs import MAX_LISTED, EvalError, EvalSettings, GtImages, load_eval_desc_map, load_gt, read_val_data
from .pycoco import METRIC_NAMES, Evaluation, matched_ious, per_category, run_cocoeval
from .report import _counts_report, _iou_summary, _settings_report, _versions
from .tally import _read_all, _Tally


def evaluate_results(results_path: str, gt_path: str, settings: Optional[EvalSettings] = None,
                     progress: bool = True) -> Evaluation:
    """Parse every result row, build COCO detections and score them. See the module doc."""
    settings = settings or EvalSettings()
    settings.check()
    if not os.path.isfile(results_path):
        raise EvalError(f"results file not found: {results_path}")
    if not os.path.isfile(gt_path):
        raise EvalError(f"ground-truth file not found: {gt_path}")
    coco_gt = load_gt(gt_path)
    gt_images = GtImages(coco_gt)
    desc_map, desc_map_source = load_eval_desc_map(settings.desc_map)
    annotated = {a["category_id"] for a in coco_gt.dataset["annotations"]}
    try:
        mapper = CategoryMapper(coco_gt.dataset["categories"], desc_map, annotated)
    except AmbiguousCategoriesError as e:
        raise EvalError(f"{gt_path}" + (f" with --desc-map {desc_map_source}" if desc_map else "") + f": {e}") \
            from None
    except ValueError as e:
        raise EvalError(f"--desc-map {desc_map_source}: {e}") from None
    requested = read_val_data(settings.val_data, gt_images, gt_path) if settings.val_data else None
    tally = _Tally(results_path, gt_images, mapper, settings)

    t0, c0 = time.perf_counter(), time.process_time()
    _read_all(results_path, tally, progress)
    if tally.rows["total"] == 0:
        raise EvalError(f"{results_path}: no result rows")
    if not tally.seen:
        raise EvalError(
            f"no row of {results_path} matched an image of {gt_path} (unmatched rows by reason: "
            f"{dict(tally.unmatched)}); are results and ground truth the same split? Rows match by image_id "
            "(chat_template_kwargs.coord_meta or a top-level column), else by the base name of images[0].path "
            "against the GT file_name.")
    if tally.rows["duplicate_image"]:
        raise EvalError(
            f"{results_path} holds {tally.rows['duplicate_image']} more row(s) for images that already have one: "
            f"{_describe_duplicates(tally)}. swift infer appends to an existing --result_path, so rows of an "
            "earlier run (a crashed one, another checkpoint or decoding) are mixed with the new ones and it is "
            "not known which to score: infer into a new file, or keep the rows of one run only.")
    img_ids, coverage = _coverage(tally, requested, settings, results_path, gt_path)
    o = tally.objects
    in_scored_rows = o["parsed"] - o["in_unmatched_rows"] - o["in_duplicate_rows"]
    if o["unmatched_description"] and 2 * o["unmatched_description"] >= in_scored_rows:
        common = ", ".join(repr(d) for d, _ in tally.unmatched_desc.most_common(3))
        coverage["headline"] += (
            f" WARNING: {o['unmatched_description']} of {in_scored_rows} objects have a description that maps to "
            f"no category (most frequent: {common})"
            + ("." if desc_map else "; a model trained on data converted with coord-prepare-coco --desc-map is "
               "scored with the same --desc-map (or that conversion's summary file)."))
    flagged = coco_gt.coord_repairs.ignore_flagged
    if flagged:
        coverage["headline"] += (
            f" WARNING: {flagged} GT boxes of {gt_path} have \"ignore\": 1 and are scored as ordinary boxes, as "
            "pycocotools does (it reads only iscrowd); set iscrowd 1 on them to make them ignore regions.")
    score, score_note = tally.choose_score()
    detections = tally.detections(score)
    t1, c1 = time.perf_counter(), time.process_time()
    ev = run_cocoeval(coco_gt, detections, img_ids, settings.max_dets)
    t2, c2 = time.perf_counter(), time.process_time()

    ious = matched_ious(ev)
    img_set = set(img_ids)
    eval_anns = [a for a in coco_gt.dataset["annotations"] if a["image_id"] in img_set]
    report = {
        "headline": coverage["headline"],
        "metrics": {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)},
        "per_category": per_category(ev, coco_gt, detections),
        "settings": _settings_report(settings, score, score_note, tally, results_path, gt_path),
        "counts": _counts_report(tally, len(img_ids), eval_anns, len(detections)),
        "matched_iou": _iou_summary(ious),
        "timing_s": {"read_parse_convert": round(t1 - t0, 3), "cocoeval": round(t2 - t1, 3),
                     "read_parse_convert_cpu": round(c1 - c0, 3), "cocoeval_cpu": round(c2 - c1, 3)},
        "versions": _versions(),
        "coverage": coverage,
    }
    report["settings"]["gt_repairs"] = coco_gt.coord_repairs.as_dict()
    report["settings"]["category_mapping"]["desc_map"] = (
        {"source": desc_map_source, "map": {str(k): v for k, v in desc_map.items()}} if desc_map else None)
    report["settings"].update(evaluation_provenance(gt_path, img_ids, results_path))
    gt_norm = []
    for a in eval_anns:
        if not a.get("iscrowd", 0):
            img = gt_images.by_id[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            gt_norm.append(codec.normalize_box((x, y, x + bw, y + bh), img["width"], img["height"]))
    return Evaluation(report, detections, coco_gt, ev, gt_norm, ious)


def _describe_duplicates(tally: "_Tally") -> str:
    listed = ", ".join(f"line {ln} repeats image {g!r} (first at line {first})" for ln, g, first in tally.duplicate_lines)
    more = tally.rows["duplicate_image"] - len(tally.duplicate_lines)
    return listed + (f", ... ({more} more)" if more > 0 else "")


def _describe_ids(ids, gt_images: GtImages) -> str:
    ids = sorted(ids)
    shown = ", ".join(f"{gt_images.original_id(i)!r} ({gt_images.by_id[i].get('file_name') or gt_images.by_id[i].get('coco_url', '?')})"
                      for i in ids[:MAX_LISTED])
    return shown + (f", ... ({len(ids) - MAX_LISTED} more)" if len(ids) > MAX_LISTED else "")


def _coverage(tally: _Tally, requested: Optional[Dict[int, int]], settings: EvalSettings, results_path: str,
              gt_path: str):
    """``(image ids to score, coverage report)``; raises when rows are missing and no subset was asked for."""
    gt_images = tally.gt_images
    n_gt = len(gt_images.by_id)
    seen = set(tally.seen)
    missing = set(gt_images.by_id) - seen
    warning = None
    if requested is not None:
        want = set(requested)
        problems = []
        lost = want - seen
        if lost:
            problems.append(f"{len(lost)} image(s) of --val-data have no result row: {_describe_ids(lost, gt_images)}")
        extra = seen - want
        if extra:
            problems.append(f"{len(extra)} row(s) for images not in --val-data: {_describe_ids(extra, gt_images)}")
        if tally.unmatched:
            listed = ", ".join(f"line {ln}: {how} {what!r}" for ln, how, what in tally.unmatched_lines)
            problems.append(f"{sum(tally.unmatched.values())} row(s) match no GT image: {listed}")
        if problems:
            raise EvalError(f"{results_path} does not hold every row of --val-data {settings.val_data} exactly "
                            "once (a crashed or ungathered shard, or results of another file?):\n  "
                            + "\n  ".join(problems))
        img_ids = sorted(want)
        mode = f"the images of --val-data {settings.val_data}, each with exactly one result row"
    elif settings.all_gt_images:
        img_ids = sorted(gt_images.by_id)
        mode = "every GT image (--all-gt-images)"
        if missing:
            warning = (f"{len(missing)} GT images have no result row and were scored as empty answers: "
                       f"{_describe_ids(missing, gt_images)}")
    elif settings.subset_from_results:
        img_ids = sorted(seen)
        mode = "the GT images with a result row (--subset-from-results)"
        if missing:
            warning = (f"subset: {len(missing)} GT images without a result row are not scored: "
                       f"{_describe_ids(missing, gt_images)}")
    else:
        if missing:
            raise EvalError(
                f"{len(missing)} of {n_gt} GT images of {gt_path} have no row in {results_path}: "
                f"{_describe_ids(missing, gt_images)}. A number on a silent subset is misleading: complete the "
                "results (a crashed shard? a wrong VAL_DATA?), or say which images to score: --val-data "
                "VAL_JSONL (the unified samples that were inferred), --subset-from-results (only the images "
                "with a row) or --all-gt-images (missing rows count as empty answers).")
        img_ids = sorted(gt_images.by_id)
        mode = "every GT image"
    headline = f"Scored {len(img_ids)} of {n_gt} GT images ({mode})."
    if warning:
        headline += f" WARNING: {warning}"
    size = tally.rows["size_differs_from_gt"]
    if size:
        headline += (f" WARNING: {size} image files store another pixel size than the GT's width x height (lines "
                     f"{', '.join(str(x) for x in tally.size_mismatch_lines[:MAX_LISTED])}): their boxes are "
                     "scaled to the GT size.")
    return img_ids, {"scored_images": len(img_ids), "gt_images": n_gt, "images_scored": mode,
                     "gt_images_without_row": len(missing), "headline": headline}
