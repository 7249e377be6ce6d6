"""The report of an evaluation: its dict sections, its markdown, and the files written.

``_settings_report`` / ``_decoding_settings`` / ``_counts_report`` / ``_iou_summary`` / ``_versions`` build
the sections of ``report.json``; ``format_markdown`` (with ``metrics_table``, ``describe_repairs``) renders
``report.md``; ``write_outputs`` writes ``report.json``, ``report.md`` and ``detections.json`` (COCO
results format, re-scorable with pycocotools as it is), and the PNGs of ``eval.plots`` when asked.
"""
from __future__ import annotations

import json
import math
import os
import sys
from importlib import metadata
from typing import TYPE_CHECKING, List

import numpy as np

from ..core import codec
from .decoding_info import DecodingInfoError, resolve
from .detections import DECODE_FORMULAS, SCORE_FORMULAS
from .inputs import EvalError, EvalSettings, GtImages
from .plots import write_plots
from .pycoco import IOU_HIST_EDGES, METRIC_NAMES, Evaluation, per_category_by_id

if TYPE_CHECKING:
    from .tally import _Tally


def _settings_report(settings: EvalSettings, score: str, score_note: str, tally: _Tally, results_path: str,
                     gt_path: str) -> dict:
    return {
        "decode": settings.decode,
        "decode_formula": DECODE_FORMULAS["coordexp_exact" if settings.decode == "coordexp" and tally.slots is not None
                                          else settings.decode],
        "score": score,
        "score_formula": SCORE_FORMULAS[score],
        "score_choice": score_note,
        "max_dets": int(settings.max_dets),
        "images": ("all GT images (missing rows scored as empty answers)" if settings.all_gt_images
                   else "GT images with a result row" if settings.subset_from_results
                   else f"the images of {settings.val_data}" if settings.val_data
                   else "all GT images (each must have a row)"),
        "dedupe_identical_objects": settings.dedupe,
        "category_mapping": {
            "rule": "case-insensitive exact name, then regular plural, then the synonym table",
            "aliases_used": dict(tally.aliases_used.most_common()),
        },
        "results": results_path,
        "gt": gt_path,
        **_decoding_settings(settings, results_path, tally.slots),
    }


def _decoding_settings(settings: EvalSettings, results_path: str, slots=None) -> dict:
    try:
        info, warning = resolve(results_path, settings.decoding, settings.infer_backend)
    except DecodingInfoError as e:
        raise EvalError(str(e)) from e
    if warning:
        print(f"coord-eval: warning: {warning}", file=sys.stderr)
    if settings.decode == "coordexp" and slots is not None:
        info["coordexp_bins"] = f"exact: all 1000 bins per coordinate slot, from {slots.path}"
    elif settings.decode == "coordexp":
        # Re-scored from the recorded top_logprobs: an expectation over the K likeliest bins only (biased for
        # broad distributions). On vLLM no extension point joins a processor's slot to ms-swift's result row,
        # so nothing exact can be recorded there.
        info["coordexp_bins"] = "top_logprobs: truncated to the top k bins recorded per coordinate slot"
        if info["infer_backend"] == "vllm":
            print("coord-eval: note: --decode coordexp on vLLM results is the expectation over the top k "
                  "recorded bins (--top_logprobs), not over all bins", file=sys.stderr)
    return info


def _counts_report(tally: _Tally, n_evaluated: int, eval_anns: List[dict], n_detections: int) -> dict:
    rows, objects, max_dets = tally.rows, tally.objects, tally.settings.max_dets
    counts = {
        "rows": {
            "total": rows["total"],
            "matched_by_image_id": rows["matched_by_image_id"],
            "matched_by_file_name": rows["matched_by_file_name"],
            "unmatched": dict(sorted(tally.unmatched.items())),
            "duplicate_image": rows["duplicate_image"],
            "with_logprobs": rows["with_logprobs"],
            "without_end_of_turn": rows["without_end_of_turn"],
            "tokens_disagree_with_response": rows["tokens_disagree_with_response"],
            "without_objects": rows["without_objects"],
            "size_differs_from_gt": rows["size_differs_from_gt"],
            "size_differs_from_gt_lines": tally.size_mismatch_lines[:20],
            "image_file_not_checked": rows["image_file_not_checked"],
        },
        "images": {
            "gt_images": len(tally.gt_images.by_id),
            "evaluated": n_evaluated,
            "gt_images_without_row": len(tally.gt_images.by_id) - len(tally.seen),
            "gt_boxes": sum(1 for a in eval_anns if not a.get("iscrowd", 0)),
            "gt_crowd_regions": sum(1 for a in eval_anns if a.get("iscrowd", 0)),
        },
        "objects": {
            "parsed": objects["parsed"],
            "in_unmatched_rows": objects["in_unmatched_rows"],
            "in_duplicate_rows": objects["in_duplicate_rows"],
            "unmatched_description": objects["unmatched_description"],
            "detections": n_detections,
            # COCOeval keeps the max_dets best-scored detections of each (image, category) pair.
            "beyond_max_dets": sum(max(0, n - max_dets) for n in tally.per_image_cat.values()),
            "images_over_max_dets": sum(1 for n in tally.per_image.values() if n > max_dets),
            "zero_area_boxes": objects["zero_area_boxes"],
        },
        "parser": {r: tally.parse_counts.get(r, 0) for r in codec.PARSE_REASONS},
        "unmatched_descriptions": dict(tally.unmatched_desc.most_common()),
    }
    if tally.settings.decode == "coordexp":
        counts["coordexp"] = tally.decode_stats.as_dict()
    return counts


def _iou_summary(ious: List[float]) -> dict:
    hist, _ = np.histogram(np.asarray(ious, dtype=float), bins=np.asarray(IOU_HIST_EDGES))
    return {"matched_at_iou_0.5": len(ious), "mean": float(np.mean(ious)) if ious else None,
            "histogram_edges": list(IOU_HIST_EDGES), "histogram": [int(v) for v in hist]}


def _versions() -> dict:
    out = {}
    for dist in ("swift-coord-plugin", "pycocotools"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def describe_repairs(repairs: dict) -> List[str]:
    out = []
    if repairs.get("area_filled_with_box_area"):
        out.append(f"{repairs['area_filled_with_box_area']} annotations without area: box area w*h used")
    if repairs.get("iscrowd_filled_with_0"):
        out.append(f"{repairs['iscrowd_filled_with_0']} annotations without iscrowd: 0 used")
    if repairs.get("image_ids_mapped_to_integers"):
        out.append(f"{repairs['image_ids_mapped_to_integers']} string image ids scored as integers 1..N in file "
                   "order (detections.json carries the file's ids)")
    if repairs.get("ignore_flagged_scored_as_boxes"):
        out.append(f"{repairs['ignore_flagged_scored_as_boxes']} annotations with \"ignore\": 1 scored as "
                   "ordinary boxes (pycocotools reads only iscrowd)")
    if repairs.get("annotation_ids_assigned"):
        out.append(f"annotation ids assigned 1..{repairs['annotation_ids_assigned']} in file order "
                   f"({repairs['annotation_ids_reason']})")
    return out


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "-" if v < 0 else f"{v:.4f}"
    return str(v)


def metrics_table(report: dict) -> str:
    m = report["metrics"]
    md = report["settings"]["max_dets"]
    names = [n if n != "AR100" else f"AR{md}" for n in METRIC_NAMES]
    head = "| " + " | ".join(names) + " |"
    sep = "|" + "---|" * len(names)
    vals = "| " + " | ".join(_fmt(m[n]) for n in METRIC_NAMES) + " |"
    return "\n".join([head, sep, vals])


def format_markdown(report: dict) -> str:
    s, c = report["settings"], report["counts"]
    lines = [f"**{report['headline']}**", "", "# COCO bbox evaluation", "", metrics_table(report), ""]
    lines += ["(-: no GT in that area range.)", "", "## Settings", "",
              f"- decode: `{s['decode']}` ({s['decode_formula']})",
              f"- score: `{s['score']}` ({s['score_formula']}; {s['score_choice']})",
              f"- max detections per image: {s['max_dets']}",
              f"- images scored: {s['images']}",
              f"- category mapping: {s['category_mapping']['rule']}"
              + (f"; description map from {s['category_mapping']['desc_map']['source']}"
                 if s["category_mapping"].get("desc_map") else "; no description map"),
              f"- ground-truth repairs: {'; '.join(describe_repairs(s['gt_repairs'])) or 'none'}",
              f"- results: `{s['results']}`", f"- ground truth: `{s['gt']}`",
              f"- generated with: decoding `{s.get('decoding')}`, backend `{s.get('infer_backend')}` "
              f"(from {s.get('decoding_source')}; log-probabilities: {s.get('logprobs_distribution')})", ""]
    lines += ["## Counts", ""]
    for group in ("rows", "images", "objects", "parser"):
        lines += [f"**{group}**", "", "| count | value |", "|---|---|"]
        for k, v in c[group].items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}: {b}" for a, b in v.items()) or "none"
            elif isinstance(v, list):
                v = ", ".join(str(x) for x in v) or "none"
            lines.append(f"| {k} | {v} |")
        lines.append("")
    if "coordexp" in c:
        lines += ["**coordexp**", "", "| count | value |", "|---|---|"]
        for k, v in c["coordexp"].items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}: {b}" for a, b in v.items()) or "none"
            lines.append(f"| {k} | {_fmt(v)} |")
        lines.append("")
    iou = report["matched_iou"]
    lines += [f"Matched detections (IoU >= 0.5, non-crowd): {iou['matched_at_iou_0.5']}, "
              f"mean IoU {_fmt(iou['mean'])}.", ""]
    alias = s["category_mapping"]["aliases_used"]
    if alias:
        lines += ["**descriptions mapped through the plural/synonym table**", ""]
        lines += [f"- {k}: {v}" for k, v in list(alias.items())[:30]] + [""]
    un = c["unmatched_descriptions"]
    if un:
        lines += [f"**unmatched descriptions** ({sum(un.values())} objects, {len(un)} distinct; most frequent)", ""]
        lines += [f"- `{k}`: {v}" for k, v in list(un.items())[:30]] + [""]
    lines += ["## Per-category AP", "", "| category | id | AP | AP50 | GT boxes | detections |",
              "|---|---|---|---|---|---|"]
    for cid, r in sorted(per_category_by_id(report).items()):
        if r["num_gt"] or r["num_detections"]:
            lines.append(f"| {r['name']} | {cid} | {_fmt(r['AP'])} | {_fmt(r['AP50'])} | {r['num_gt']} | "
                         f"{r['num_detections']} |")
    return "\n".join(lines) + "\n"


def _json_safe(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def write_outputs(out_dir: str, evaluation: Evaluation, plots: bool = False) -> List[str]:
    """Write report.json, report.md, detections.json (and the PNGs with ``plots``); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    p = os.path.join(out_dir, "detections.json")
    detections = evaluation.detections
    images = GtImages(evaluation.coco_gt)
    if images.original:  # the ground truth's own (string) ids, so that the file scores against it as it is
        detections = [dict(d, image_id=images.original_id(d["image_id"])) for d in detections]
    with open(p, "w", encoding="utf-8") as f:
        json.dump(detections, f)
    paths.append(p)
    p = os.path.join(out_dir, "report.json")
    with open(p, "w", encoding="utf-8") as f:
        json.dump(_json_safe(evaluation.report), f, indent=1)
    paths.append(p)
    p = os.path.join(out_dir, "report.md")
    with open(p, "w", encoding="utf-8") as f:
        f.write(format_markdown(evaluation.report))
    paths.append(p)
    if plots:
        paths += write_plots(out_dir, evaluation)
    return paths
