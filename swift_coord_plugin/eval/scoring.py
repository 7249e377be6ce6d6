"""``swift infer`` results -> COCO detections -> pycocotools' COCOeval -> report (no ms-swift import).

``evaluate_results`` does the whole pass and returns an ``Evaluation``; ``write_outputs`` writes
``report.json``, ``report.md`` and ``detections.json`` (COCO results format, re-scorable with
pycocotools as it is). Every count in the report is explained in the project's evaluation docs.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core import codec
from .categories import CategoryMapper
from .detections import DECODE_FORMULAS, DECODES, SCORE_FORMULAS, SCORES, DecodeStats, coco_bbox, decode_bins, \
    object_score
from .results import ResultsError, count_lines, iter_lines, merge_counts, read_row

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_HIST_EDGES = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))  # 0.50, 0.55, ..., 1.00


class EvalError(ValueError):
    """A setting or input that makes the evaluation impossible; the message says what to do."""


@dataclass
class EvalSettings:
    decode: str = "argmax"
    score: Optional[str] = None  # None: "logprob" when every row with objects has logprobs, else "constant"
    max_dets: int = 100
    all_gt_images: bool = False  # score GT images without a result row as empty answers
    dedupe: bool = True  # the parser's duplicate-object rule

    def check(self) -> None:
        if self.decode not in DECODES:
            raise EvalError(f"--decode {self.decode!r}: expected one of {', '.join(DECODES)}")
        if self.score is not None and self.score not in SCORES:
            raise EvalError(f"--score {self.score!r}: expected one of {', '.join(SCORES)}")
        if int(self.max_dets) < 10:
            raise EvalError(f"--max-dets {self.max_dets}: must be at least 10 (COCOeval also reports AR@1, AR@10)")


@dataclass
class Evaluation:
    report: dict
    detections: List[dict]
    coco_gt: object = None
    coco_eval: object = None
    gt_boxes_norm: List[Sequence[float]] = field(default_factory=list)
    matched_ious: List[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- ground truth
@contextlib.contextmanager
def quiet():
    """pycocotools prints progress on stdout; keep it out of the evaluator's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_gt(path: str):
    """Load a COCO instances file into pycocotools' ``COCO``, checking what the evaluator needs."""
    from pycocotools.coco import COCO

    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
            raise EvalError(f"{path}: not a COCO instances file (no '{key}' list)")
    for i, img in enumerate(data["images"]):
        for key in ("id", "width", "height"):
            if not isinstance(img.get(key), (int, float)) or isinstance(img.get(key), bool):
                raise EvalError(f"{path}: images[{i}] has no numeric '{key}'")
    coco = COCO()
    coco.dataset = data
    with quiet():
        coco.createIndex()
    return coco


class GtImages:
    """Finds a GT image for a result row: by ``image_id``, else by the base name of its image file."""

    def __init__(self, coco_gt):
        self.by_id = {int(i["id"]): i for i in coco_gt.dataset["images"]}
        names: Dict[str, Optional[int]] = {}
        for img in coco_gt.dataset["images"]:
            name = re.split(r"[\\/]", str(img.get("file_name", "")))[-1]
            if name:
                names[name] = None if name in names else int(img["id"])  # None: ambiguous
        self.by_name = names

    def match(self, image_id: Optional[int], file_name: Optional[str]):
        """``(gt_image_id or None, how)`` with ``how`` one of by_image_id / by_file_name / a reason."""
        if image_id is not None:
            return (image_id, "by_image_id") if image_id in self.by_id else (None, "unknown_image_id")
        if file_name is None:
            return None, "no_image_id_or_file_name"
        if file_name not in self.by_name:
            return None, "unknown_file_name"
        gid = self.by_name[file_name]
        return (gid, "by_file_name") if gid is not None else (None, "ambiguous_file_name")


# ----------------------------------------------------------------------------- COCOeval
def run_cocoeval(coco_gt, detections: List[dict], img_ids: Sequence[int], max_dets: int = 100):
    """Standard bbox COCOeval over ``img_ids``; returns the evaluated ``COCOeval`` (stats filled).

    ``detections`` are copied: pycocotools' ``loadRes`` adds keys to the dicts it gets.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

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
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            ev.summarize()
    ev.summary_text = text.getvalue()
    return ev


def _mean_valid(a: np.ndarray) -> Optional[float]:
    v = a[a > -1]
    return float(np.mean(v)) if v.size else None


def per_category(ev, coco_gt, detections: List[dict]) -> Dict[str, dict]:
    """AP and AP50 (area all, max dets) of each category with its GT and detection counts;
    AP is null for a category without GT in the evaluated images."""
    p = ev.params
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    img_set = set(p.imgIds)
    n_gt = Counter(a["category_id"] for a in coco_gt.dataset["annotations"]
                   if a["image_id"] in img_set and not a.get("iscrowd", 0))
    n_dt = Counter(d["category_id"] for d in detections)
    out = {}
    for k, cid in enumerate(p.catIds):
        name = coco_gt.cats[cid]["name"]
        out[name] = {"id": int(cid), "AP": _mean_valid(prec[:, :, k, 0, -1]),
                     "AP50": _mean_valid(prec[0, :, k, 0, -1]), "num_gt": n_gt.get(cid, 0),
                     "num_detections": n_dt.get(cid, 0)}
    return out


def _iou_xywh(a, b, crowd: bool) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] if crowd else a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


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
                out.append(_iou_xywh(ev.cocoDt.anns[dt_id]["bbox"], g["bbox"], bool(g.get("iscrowd", 0))))
    return out


# ----------------------------------------------------------------------------- the pass
def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, unit="row", desc="coord-eval", dynamic_ncols=True)


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
    mapper = CategoryMapper(coco_gt.dataset["categories"])
    need_logprobs = settings.decode == "coordexp" or settings.score in ("logprob", "logprob_desc")

    rows = Counter()
    unmatched = Counter()
    parse_counts: Dict[str, int] = {}
    objects = Counter()
    unmatched_desc = Counter()
    aliases_used = Counter()
    decode_stats = DecodeStats()
    seen: Dict[int, int] = {}  # gt image id -> line of the row that gave it
    size_mismatch_lines: List[int] = []
    # Per kept object: (image_id, category_id, bbox, logprob score or None, logprob_desc score or None)
    kept = []
    per_image = Counter()
    per_image_cat = Counter()

    t_start, c_start = time.perf_counter(), time.process_time()
    total = count_lines(results_path)
    for line, row in _progress(iter_lines(results_path), total, progress):
        pred = read_row(row, line, results_path, dedupe=settings.dedupe, keep_top=settings.decode == "coordexp")
        rows["total"] += 1
        merge_counts(parse_counts, pred.parse_counts)
        objects["parsed"] += len(pred.objects)
        if pred.has_logprobs:
            rows["with_logprobs"] += 1
            if not pred.ended:
                rows["without_end_of_turn"] += 1
            if not pred.text_agrees:
                rows["tokens_disagree_with_response"] += 1
        if not pred.objects:
            rows["without_objects"] += 1
        elif not pred.has_logprobs:
            rows["objects_without_logprobs"] += 1
            if need_logprobs:
                what = "--decode coordexp" if settings.decode == "coordexp" else f"--score {settings.score}"
                raise EvalError(
                    f"{results_path}:{line}: {what} needs token log-probabilities but this row has none; "
                    "run swift infer with --logprobs true --top_logprobs K (K >= 5 for coordexp), "
                    "or use --decode argmax --score constant")
        gid, how = gt_images.match(pred.image_id, pred.file_name)
        if gid is None:
            unmatched[how] += 1
            objects["in_unmatched_rows"] += len(pred.objects)
            continue
        if gid in seen:
            rows["duplicate_image"] += 1
            objects["in_duplicate_rows"] += len(pred.objects)
            continue
        seen[gid] = line
        rows["matched_" + how] += 1
        img = gt_images.by_id[gid]
        w, h = float(img["width"]), float(img["height"])
        if (pred.width is not None and pred.width != img["width"]) or \
                (pred.height is not None and pred.height != img["height"]):
            rows["size_differs_from_gt"] += 1
            size_mismatch_lines.append(line)
        for obj in pred.objects:
            hit = mapper.lookup(obj.desc)
            if hit is None:
                unmatched_desc[codec.clean_desc(obj.desc)] += 1
                objects["unmatched_description"] += 1
                continue
            cid, via_alias = hit
            if via_alias:
                aliases_used[f"{codec.clean_desc(obj.desc).lower()} -> {mapper.names[cid]}"] += 1
            if settings.decode == "coordexp":
                try:
                    bins = decode_bins(obj, "coordexp", decode_stats)
                except ValueError:
                    raise EvalError(
                        f"{results_path}:{line}: --decode coordexp needs top_logprobs for every token; run "
                        "swift infer with --logprobs true --top_logprobs K (K >= 5)") from None
            else:
                bins = decode_bins(obj, "argmax")
            bbox = coco_bbox(bins, w, h)
            if bbox[2] <= 0 or bbox[3] <= 0:
                objects["zero_area_boxes"] += 1
            s_lp = object_score(obj, "logprob") if obj.coords is not None else None
            s_lpd = object_score(obj, "logprob_desc") if obj.coords is not None else None
            kept.append((gid, cid, bbox, s_lp, s_lpd))
            per_image[gid] += 1
            per_image_cat[gid, cid] += 1

    if rows["total"] == 0:
        raise EvalError(f"{results_path}: no result rows")
    if not seen:
        raise EvalError(
            f"no row of {results_path} matched an image of {gt_path} "
            f"(unmatched rows by reason: {dict(unmatched)}); are results and ground truth the same split? "
            "Rows match by a top-level image_id, else by the base name of images[0].path against file_name.")

    score = settings.score
    score_note = "as requested"
    if score is None:
        if rows["objects_without_logprobs"] == 0 and rows["with_logprobs"] > 0:
            score, score_note = "logprob", "default: every row with objects has logprobs"
        else:
            score, score_note = "constant", ("default: no logprobs in the results" if rows["with_logprobs"] == 0
                                             else f"default: {rows['objects_without_logprobs']} rows with objects "
                                                  "have no logprobs")
    idx = {"logprob": 3, "logprob_desc": 4}.get(score)
    detections = [{"image_id": int(k[0]), "category_id": int(k[1]), "bbox": k[2],
                   "score": 1.0 if idx is None else k[idx]} for k in kept]
    objects["detections"] = len(detections)

    img_ids = sorted(gt_images.by_id) if settings.all_gt_images else sorted(seen)
    t_rows, c_rows = time.perf_counter(), time.process_time()
    ev = run_cocoeval(coco_gt, detections, img_ids, settings.max_dets)
    t_eval, c_eval = time.perf_counter(), time.process_time()
    metrics = {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)}
    ious = matched_ious(ev)
    # COCOeval keeps the max_dets best-scored detections of each (image, category) pair.
    beyond = sum(max(0, n - settings.max_dets) for n in per_image_cat.values())

    img_set = set(img_ids)
    eval_anns = [a for a in coco_gt.dataset["annotations"] if a["image_id"] in img_set]
    report = {
        "metrics": metrics,
        "per_category": per_category(ev, coco_gt, detections),
        "settings": {
            "decode": settings.decode,
            "decode_formula": DECODE_FORMULAS[settings.decode],
            "score": score,
            "score_formula": SCORE_FORMULAS[score],
            "score_choice": score_note,
            "max_dets": int(settings.max_dets),
            "images": "all GT images (missing rows scored as empty answers)" if settings.all_gt_images
            else "GT images with a result row",
            "dedupe_identical_objects": settings.dedupe,
            "category_mapping": {
                "rule": "case-insensitive exact name, then regular plural, then the synonym table",
                "aliases_used": dict(aliases_used.most_common()),
            },
            "results": results_path,
            "gt": gt_path,
        },
        "counts": {
            "rows": {
                "total": rows["total"],
                "matched_by_image_id": rows["matched_by_image_id"],
                "matched_by_file_name": rows["matched_by_file_name"],
                "unmatched": dict(sorted(unmatched.items())),
                "duplicate_image": rows["duplicate_image"],
                "with_logprobs": rows["with_logprobs"],
                "without_end_of_turn": rows["without_end_of_turn"],
                "tokens_disagree_with_response": rows["tokens_disagree_with_response"],
                "without_objects": rows["without_objects"],
                "size_differs_from_gt": rows["size_differs_from_gt"],
                "size_differs_from_gt_lines": size_mismatch_lines[:20],
            },
            "images": {
                "gt_images": len(gt_images.by_id),
                "evaluated": len(img_ids),
                "gt_images_without_row": len(gt_images.by_id) - len(seen),
                "gt_boxes": sum(1 for a in eval_anns if not a.get("iscrowd", 0)),
                "gt_crowd_regions": sum(1 for a in eval_anns if a.get("iscrowd", 0)),
            },
            "objects": {
                "parsed": objects["parsed"],
                "in_unmatched_rows": objects["in_unmatched_rows"],
                "in_duplicate_rows": objects["in_duplicate_rows"],
                "unmatched_description": objects["unmatched_description"],
                "detections": objects["detections"],
                "beyond_max_dets": beyond,
                "images_over_max_dets": sum(1 for n in per_image.values() if n > settings.max_dets),
                "zero_area_boxes": objects["zero_area_boxes"],
            },
            "parser": {r: parse_counts.get(r, 0) for r in codec.PARSE_REASONS},
            "unmatched_descriptions": dict(unmatched_desc.most_common()),
        },
        "matched_iou": _iou_summary(ious),
        "timing_s": {"read_parse_convert": round(t_rows - t_start, 3), "cocoeval": round(t_eval - t_rows, 3),
                     "read_parse_convert_cpu": round(c_rows - c_start, 3), "cocoeval_cpu": round(c_eval - c_rows, 3)},
        "versions": _versions(),
    }
    if settings.decode == "coordexp":
        report["counts"]["coordexp"] = decode_stats.as_dict()
    gt_norm = []
    for a in eval_anns:
        if a.get("iscrowd", 0):
            continue
        img = gt_images.by_id[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        gt_norm.append(codec.normalize_box((x, y, x + bw, y + bh), img["width"], img["height"]))
    return Evaluation(report, detections, coco_gt, ev, gt_norm, ious)


def _iou_summary(ious: List[float]) -> dict:
    hist, _ = np.histogram(np.asarray(ious, dtype=float), bins=np.asarray(IOU_HIST_EDGES))
    return {"matched_at_iou_0.5": len(ious), "mean": float(np.mean(ious)) if ious else None,
            "histogram_edges": list(IOU_HIST_EDGES), "histogram": [int(v) for v in hist]}


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("swift-coord-plugin", "pycocotools"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ----------------------------------------------------------------------------- outputs
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
    lines = ["# COCO bbox evaluation", "", metrics_table(report), ""]
    lines += ["(-: no GT in that area range.)", "", "## Settings", "",
              f"- decode: `{s['decode']}` ({s['decode_formula']})",
              f"- score: `{s['score']}` ({s['score_formula']}; {s['score_choice']})",
              f"- max detections per image: {s['max_dets']}",
              f"- images scored: {s['images']}",
              f"- category mapping: {s['category_mapping']['rule']}",
              f"- results: `{s['results']}`", f"- ground truth: `{s['gt']}`", ""]
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
    lines += ["## Per-category AP", "", "| category | id | AP | AP50 | GT boxes | detections |", "|---|---|---|---|---|---|"]
    for name, r in sorted(report["per_category"].items(), key=lambda kv: kv[1]["id"]):
        if r["num_gt"] or r["num_detections"]:
            lines.append(f"| {name} | {r['id']} | {_fmt(r['AP'])} | {_fmt(r['AP50'])} | {r['num_gt']} | "
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
    with open(p, "w", encoding="utf-8") as f:
        json.dump(evaluation.detections, f)
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
        from .plots import write_plots

        paths += write_plots(out_dir, evaluation)
    return paths
