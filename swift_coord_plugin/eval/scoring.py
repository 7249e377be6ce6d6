"""``swift infer`` results -> COCO detections -> pycocotools' COCOeval -> report (no ms-swift import).

``evaluate_results`` does the whole pass and returns an ``Evaluation``; ``write_outputs`` writes
``report.json``, ``report.md`` and ``detections.json`` (COCO results format, re-scorable with
pycocotools as it is). Every count in the report is explained in the project's evaluation docs.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core import codec
from .categories import CategoryMapper
from .decoding_info import DecodingInfoError, resolve
from .detections import DECODE_FORMULAS, DECODES, SCORE_FORMULAS, SCORES, DecodeStats, coco_bbox, decode_bins, \
    object_score
from .results import RowPrediction, count_lines, iter_lines, merge_counts, read_row

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
    decoding: Optional[str] = None  # how the results were generated (free | constrained | coordexp); see decoding_info
    infer_backend: Optional[str] = None  # transformers | vllm

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


@dataclass
class _Kept:
    """A detection before its score rule is chosen (that needs every row seen)."""

    image_id: int
    category_id: int
    bbox: List[float]
    logprob: Optional[float]
    logprob_desc: Optional[float]


class _Tally:
    """Everything the row pass counts and keeps; ``add`` takes one parsed row."""

    def __init__(self, results_path: str, gt_images: GtImages, mapper: CategoryMapper, settings: EvalSettings):
        self.path, self.gt_images, self.mapper, self.settings = results_path, gt_images, mapper, settings
        self.need_logprobs = settings.decode == "coordexp" or settings.score in ("logprob", "logprob_desc")
        self.rows, self.unmatched, self.objects = Counter(), Counter(), Counter()
        self.unmatched_desc, self.aliases_used = Counter(), Counter()
        self.parse_counts: Dict[str, int] = {}
        self.decode_stats = DecodeStats()
        self.seen: Dict[int, int] = {}  # GT image id -> line of the row that gave it
        self.size_mismatch_lines: List[int] = []
        self.kept: List[_Kept] = []
        self.per_image, self.per_image_cat = Counter(), Counter()

    def add(self, pred: RowPrediction) -> None:
        rows, objects = self.rows, self.objects
        rows["total"] += 1
        merge_counts(self.parse_counts, pred.parse_counts)
        objects["parsed"] += len(pred.objects)
        if pred.has_logprobs:
            rows["with_logprobs"] += 1
            rows["without_end_of_turn"] += not pred.ended
            rows["tokens_disagree_with_response"] += not pred.text_agrees
        if not pred.objects:
            rows["without_objects"] += 1
        elif not pred.has_logprobs:
            rows["objects_without_logprobs"] += 1
            if self.need_logprobs:
                s = self.settings
                what = "--decode coordexp" if s.decode == "coordexp" else f"--score {s.score}"
                raise EvalError(
                    f"{self.path}:{pred.line}: {what} needs token log-probabilities but this row has none; "
                    "run swift infer with --logprobs true --top_logprobs K (K >= 5 for coordexp), "
                    "or use --decode argmax --score constant")
        gid, how = self.gt_images.match(pred.image_id, pred.file_name)
        if gid is None:
            self.unmatched[how] += 1
            objects["in_unmatched_rows"] += len(pred.objects)
            return
        if gid in self.seen:
            rows["duplicate_image"] += 1
            objects["in_duplicate_rows"] += len(pred.objects)
            return
        self.seen[gid] = pred.line
        rows["matched_" + how] += 1
        img = self.gt_images.by_id[gid]
        if (pred.width is not None and pred.width != img["width"]) or \
                (pred.height is not None and pred.height != img["height"]):
            rows["size_differs_from_gt"] += 1
            self.size_mismatch_lines.append(pred.line)
        for obj in pred.objects:
            self._add_object(obj, gid, float(img["width"]), float(img["height"]), pred.line)

    def _add_object(self, obj, gid: int, w: float, h: float, line: int) -> None:
        hit = self.mapper.lookup(obj.desc)
        if hit is None:
            self.unmatched_desc[codec.clean_desc(obj.desc)] += 1
            self.objects["unmatched_description"] += 1
            return
        cid, via_alias = hit
        if via_alias:
            self.aliases_used[f"{codec.clean_desc(obj.desc).lower()} -> {self.mapper.names[cid]}"] += 1
        if self.settings.decode == "coordexp":
            try:
                bins = decode_bins(obj, "coordexp", self.decode_stats)
            except ValueError:
                raise EvalError(f"{self.path}:{line}: --decode coordexp needs top_logprobs for every token; run "
                                "swift infer with --logprobs true --top_logprobs K (K >= 5)") from None
        else:
            bins = decode_bins(obj, "argmax")
        bbox = coco_bbox(bins, w, h)
        if bbox[2] <= 0 or bbox[3] <= 0:
            self.objects["zero_area_boxes"] += 1
        has_lp = obj.coords is not None
        self.kept.append(_Kept(gid, cid, bbox, object_score(obj, "logprob") if has_lp else None,
                               object_score(obj, "logprob_desc") if has_lp else None))
        self.per_image[gid] += 1
        self.per_image_cat[gid, cid] += 1

    def choose_score(self):
        """``(score rule, why)``: the requested one, else logprob when every row with objects has logprobs."""
        if self.settings.score is not None:
            return self.settings.score, "as requested"
        missing, with_lp = self.rows["objects_without_logprobs"], self.rows["with_logprobs"]
        if missing == 0 and with_lp > 0:
            return "logprob", "default: every row with objects has logprobs"
        if with_lp == 0:
            return "constant", "default: no logprobs in the results"
        return "constant", f"default: {missing} rows with objects have no logprobs"

    def detections(self, score: str) -> List[dict]:
        return [{"image_id": int(k.image_id), "category_id": int(k.category_id), "bbox": k.bbox,
                 "score": 1.0 if score == "constant" else getattr(k, score)} for k in self.kept]


def _read_all(results_path: str, tally: _Tally, progress: bool) -> None:
    total = count_lines(results_path)
    keep_top = tally.settings.decode == "coordexp"
    gc_was_enabled = gc.isenabled()
    gc.disable()  # rows make millions of short-lived acyclic objects: collection passes would only cost time
    try:
        for line, row in _progress(iter_lines(results_path), total, progress):
            tally.add(read_row(row, line, results_path, dedupe=tally.settings.dedupe, keep_top=keep_top))
    finally:
        if gc_was_enabled:
            gc.enable()


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
    tally = _Tally(results_path, gt_images, CategoryMapper(coco_gt.dataset["categories"]), settings)

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
    score, score_note = tally.choose_score()
    detections = tally.detections(score)
    img_ids = sorted(gt_images.by_id) if settings.all_gt_images else sorted(tally.seen)
    t1, c1 = time.perf_counter(), time.process_time()
    ev = run_cocoeval(coco_gt, detections, img_ids, settings.max_dets)
    t2, c2 = time.perf_counter(), time.process_time()

    ious = matched_ious(ev)
    img_set = set(img_ids)
    eval_anns = [a for a in coco_gt.dataset["annotations"] if a["image_id"] in img_set]
    report = {
        "metrics": {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)},
        "per_category": per_category(ev, coco_gt, detections),
        "settings": _settings_report(settings, score, score_note, tally, results_path, gt_path),
        "counts": _counts_report(tally, len(img_ids), eval_anns, len(detections)),
        "matched_iou": _iou_summary(ious),
        "timing_s": {"read_parse_convert": round(t1 - t0, 3), "cocoeval": round(t2 - t1, 3),
                     "read_parse_convert_cpu": round(c1 - c0, 3), "cocoeval_cpu": round(c2 - c1, 3)},
        "versions": _versions(),
    }
    gt_norm = []
    for a in eval_anns:
        if not a.get("iscrowd", 0):
            img = gt_images.by_id[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            gt_norm.append(codec.normalize_box((x, y, x + bw, y + bh), img["width"], img["height"]))
    return Evaluation(report, detections, coco_gt, ev, gt_norm, ious)


def _settings_report(settings: EvalSettings, score: str, score_note: str, tally: _Tally, results_path: str,
                     gt_path: str) -> dict:
    return {
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
            "aliases_used": dict(tally.aliases_used.most_common()),
        },
        "results": results_path,
        "gt": gt_path,
        **_decoding_settings(settings, results_path),
    }


def _decoding_settings(settings: EvalSettings, results_path: str) -> dict:
    try:
        info, warning = resolve(results_path, settings.decoding, settings.infer_backend)
    except DecodingInfoError as e:
        raise EvalError(str(e)) from e
    if warning:
        print(f"coord-eval: warning: {warning}", file=sys.stderr)
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
