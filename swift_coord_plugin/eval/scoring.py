"""``swift infer`` results -> COCO detections -> pycocotools' COCOeval -> report (no ms-swift import).

``evaluate_results`` does the whole pass and returns an ``Evaluation``; ``write_outputs`` writes
``report.json``, ``report.md`` and ``detections.json`` (COCO results format, re-scorable with
pycocotools as it is). Every count in the report is explained in the project's evaluation docs.
"""
from __future__ import annotations

import gc
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core import codec
from ..core.images import stored_size
from ..data.descriptions import AmbiguousCategoriesError
from ..provenance import evaluation_provenance
from .categories import CategoryMapper
from .decoding_info import DecodingInfoError, resolve
from .detections import DECODE_FORMULAS, DECODES, SCORE_FORMULAS, SCORES, DecodeStats, coco_bbox, decode_bins, \
    object_score, spread_score
from .evaluation import IOU_HIST_EDGES, Evaluation
from .gt import GtError, quiet
from .gt import load_gt as _load
from .plots import write_plots
from .slots import SlotsError, load as load_slots, slots_path
from .results import RowPrediction, count_lines, iter_lines, merge_counts, read_row

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
MAX_LISTED = 10  # ids / lines an error message lists before it only counts


class EvalError(ValueError):
    """A setting or input that makes the evaluation impossible; the message says what to do."""


@dataclass
class EvalSettings:
    """Which images are scored (at most one of the three; none: every GT image, each needing a row):
    ``all_gt_images`` every GT image, those without a row as empty answers; ``subset_from_results`` only
    the GT images that have a row; ``val_data`` (a unified-sample JSONL) exactly its images, each needing
    exactly one row."""

    decode: str = "argmax"
    score: Optional[str] = None  # None: "logprob" when every row with objects has logprobs, else "constant"
    max_dets: int = 100
    all_gt_images: bool = False  # score GT images without a result row as empty answers
    dedupe: bool = True  # the parser's duplicate-object rule
    subset_from_results: bool = False
    val_data: Optional[str] = None
    desc_map: Optional[str] = None  # the converter's --desc-map (file or inline JSON) or its summary file
    decoding: Optional[str] = None  # how the results were generated (free | constrained | coordexp); see decoding_info
    infer_backend: Optional[str] = None  # transformers | vllm

    def check(self) -> None:
        chosen = [flag for flag, on in (("--all-gt-images", self.all_gt_images),
                                         ("--subset-from-results", self.subset_from_results),
                                         ("--val-data", self.val_data is not None)) if on]
        if len(chosen) > 1:
            raise EvalError(f"{' and '.join(chosen)}: choose one way to say which images are scored")
        if self.decode not in DECODES:
            raise EvalError(f"--decode {self.decode!r}: expected one of {', '.join(DECODES)}")
        if self.score is not None and self.score not in SCORES:
            raise EvalError(f"--score {self.score!r}: expected one of {', '.join(SCORES)}")
        if int(self.max_dets) < 10:
            raise EvalError(f"--max-dets {self.max_dets}: must be at least 10 (COCOeval also reports AR@1, AR@10)")


# ----------------------------------------------------------------------------- ground truth
def load_gt(path: str):
    """pycocotools' ``COCO`` for a ground-truth file, checked and with its optional fields filled
    (``eval.gt``; the repairs are in ``coco.coord_repairs``). Raises ``EvalError`` naming the record."""
    try:
        coco, repairs = _load(path)
    except GtError as e:
        raise EvalError(str(e)) from None
    coco.coord_repairs = repairs
    return coco


class GtImages:
    """Finds a GT image for a result row: by ``image_id``, else by the base name of its image file
    (``file_name``, else the last part of ``coco_url``). Ids here are the evaluator's integers; a file
    with string ids keeps its own in ``original`` (``eval.gt``), and rows carry those."""

    def __init__(self, coco_gt):
        repairs = getattr(coco_gt, "coord_repairs", None)
        self.original: Dict[int, object] = dict(getattr(repairs, "original_image_ids", None) or {})
        self.by_original = {v: k for k, v in self.original.items()}
        self.by_id = {int(i["id"]): i for i in coco_gt.dataset["images"]}
        names: Dict[str, Optional[int]] = {}
        for img in coco_gt.dataset["images"]:
            name = re.split(r"[\\/]", str(img.get("file_name") or img.get("coco_url") or ""))[-1]
            if name:
                names[name] = None if name in names else int(img["id"])  # None: ambiguous
        self.by_name = names

    def original_id(self, gid: int):
        """The ground-truth file's id of the evaluator's image ``gid``."""
        return self.original.get(gid, gid)

    def internal_id(self, image_id) -> Optional[int]:
        """The evaluator's id of an image id as a row or a sample writes it (int or string), or None."""
        if self.original:
            for key in (image_id, str(image_id)):
                if key in self.by_original:
                    return self.by_original[key]
            return None
        if isinstance(image_id, str):
            image_id = int(image_id.strip()) if image_id.strip().isdigit() else None
        return image_id if image_id in self.by_id else None

    def match(self, image_id, file_name: Optional[str]):
        """``(gt_image_id or None, how)`` with ``how`` one of by_image_id / by_file_name / a reason."""
        if image_id is not None:
            gid = self.internal_id(image_id)
            return (gid, "by_image_id") if gid is not None else (None, "unknown_image_id")
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
    spread: Optional[float] = None


class _Tally:
    """Everything the row pass counts and keeps; ``add`` takes one parsed row."""

    def __init__(self, results_path: str, gt_images: GtImages, mapper: CategoryMapper, settings: EvalSettings):
        self.path, self.gt_images, self.mapper, self.settings = results_path, gt_images, mapper, settings
        self.need_logprobs = settings.decode == "coordexp" or settings.score in ("logprob", "logprob_desc", "spread")
        self.rows, self.unmatched, self.objects = Counter(), Counter(), Counter()
        self.unmatched_desc, self.aliases_used = Counter(), Counter()
        self.parse_counts: Dict[str, int] = {}
        self.decode_stats = DecodeStats()
        # The exact CoordExp side file (``eval.slots``), read when coordexp or the spread score asks for it.
        self.slots = None
        if settings.decode == "coordexp" or settings.score == "spread":
            try:
                self.slots = load_slots(results_path)
            except SlotsError as e:
                raise EvalError(str(e)) from None
            if self.slots is None and settings.score == "spread":
                raise EvalError(f"--score spread needs {slots_path(results_path)}, written at inference on the "
                                "transformers backend under constrained or coordexp decoding (shell/eval.sh sets "
                                "COORD_DECODING_SLOTS)")
        self.row_slots = None
        self.seen: Dict[int, int] = {}  # GT image id -> line of the row that gave it
        self.size_mismatch_lines: List[int] = []
        self.unmatched_lines: List[tuple] = []  # (line, reason, image id or file name)
        self.duplicate_lines: List[tuple] = []  # (line, GT image id, line of its first row)
        self.kept: List[_Kept] = []
        self.per_image, self.per_image_cat = Counter(), Counter()

    def add(self, pred: RowPrediction) -> None:
        rows, objects = self.rows, self.objects
        rows["total"] += 1
        if self.slots is not None:  # every row takes its line, in order, so that later rows get theirs
            self.row_slots = self.slots.take(pred.row_key)
            if self.row_slots is None and pred.objects:
                raise EvalError(f"{self.path}:{pred.line}: no line for this row (key {pred.row_key}) in "
                                f"{self.slots.path}: the slots file is not of this run, or is missing rows; "
                                "run inference again into a new file")
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
            if len(self.unmatched_lines) < MAX_LISTED:
                self.unmatched_lines.append((pred.line, how, pred.image_id if pred.image_id is not None
                                             else pred.file_name))
            return
        if gid in self.seen:
            rows["duplicate_image"] += 1
            objects["in_duplicate_rows"] += len(pred.objects)
            if len(self.duplicate_lines) < MAX_LISTED:
                self.duplicate_lines.append((pred.line, self.gt_images.original_id(gid), self.seen[gid]))
            return
        self.seen[gid] = pred.line
        rows["matched_" + how] += 1
        img = self.gt_images.by_id[gid]
        # The pixel grid the boxes are scaled to is the GT's width x height; the image file the model saw
        # must store that grid (a re-encoded, resized or EXIF-rotated copy does not).
        stored = stored_size(pred.image_path) if pred.image_path else None
        if stored is None:
            rows["image_file_not_checked"] += 1
        elif stored != (img["width"], img["height"]):
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
        where = f"{self.path}:{line}"
        if self.settings.decode == "coordexp":
            try:
                bins = decode_bins(obj, "coordexp", self.decode_stats, self.row_slots, where)
            except SlotsError as e:
                raise EvalError(str(e)) from None
            except ValueError:
                raise EvalError(f"{where}: --decode coordexp needs top_logprobs for every token; run "
                                "swift infer with --logprobs true --top_logprobs K (K >= 5)") from None
        else:
            bins = decode_bins(obj, "argmax")
        bbox = coco_bbox(bins, w, h)
        if not all(math.isfinite(v) for v in bbox):  # decode_bins keeps coordinates finite; this says so
            raise EvalError(f"{self.path}:{line}: non-finite box {bbox} for {obj.desc!r}")
        if bbox[2] <= 0 or bbox[3] <= 0:
            self.objects["zero_area_boxes"] += 1
        has_lp = obj.coords is not None
        spread = None
        if self.settings.score == "spread":
            try:
                spread = spread_score(obj, self.row_slots, where)
            except SlotsError as e:
                raise EvalError(str(e)) from None
            except ValueError as e:
                raise EvalError(f"{where}: {e}; run swift infer with --logprobs true") from None
        self.kept.append(_Kept(gid, cid, bbox, object_score(obj, "logprob") if has_lp else None,
                               object_score(obj, "logprob_desc") if has_lp else None, spread))
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


def load_eval_desc_map(spec: Optional[str]):
    """``(desc_map or None, where it came from)``. ``spec``: what ``coord-prepare-coco --desc-map`` took
    (a JSON file or inline JSON), or the converter's ``<out>.summary.json``, which records the map it used."""
    if not spec:
        return None, None
    from ..data.coco import CocoFormatError, load_desc_map

    try:
        value = load_desc_map(spec)
    except CocoFormatError as e:
        raise EvalError(str(e)) from None
    options = value.get("options")
    if isinstance(options, dict) and "desc_map" in options and "images_written" in value:
        if not options["desc_map"]:
            raise EvalError(f"--desc-map {spec}: this conversion summary used no description map")
        return dict(options["desc_map"]), f"{spec} (conversion summary)"
    return value, spec


def read_val_data(path: str, gt_images: GtImages, gt_path: str) -> Dict[int, int]:
    """GT image id -> line of each sample of a unified-sample JSONL (``--val-data``), matched like result
    rows (``image_id``, else the base name of ``image``). Every line must name a distinct GT image."""
    if not os.path.isfile(path):
        raise EvalError(f"--val-data file not found: {path}")
    out: Dict[int, int] = {}
    for line, row in iter_lines(path):
        image_id = row.get("image_id")
        if isinstance(image_id, bool) or (image_id is not None and not isinstance(image_id, (int, str))):
            raise EvalError(f"{path}:{line}: image_id must be an integer or a string, got {image_id!r}")
        image = row.get("image")
        name = re.split(r"[\\/]", image)[-1] if isinstance(image, str) else None
        gid, how = gt_images.match(image_id, name)
        if gid is None:
            raise EvalError(f"{path}:{line}: {how.replace('_', ' ')} (image_id {image_id!r}, image {image!r}) in "
                            f"{gt_path}: is --val-data the split of --gt?")
        if gid in out:
            raise EvalError(f"{path}:{line}: image {gt_images.original_id(gid)!r} already at line {out[gid]}")
        out[gid] = line
    if not out:
        raise EvalError(f"{path}: no samples")
    return out


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
    from importlib import metadata

    out = {}
    for dist in ("swift-coord-plugin", "pycocotools"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ----------------------------------------------------------------------------- outputs
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
    original = getattr(getattr(evaluation.coco_gt, "coord_repairs", None), "original_image_ids", None)
    if original:  # the ground truth's own (string) ids, so that the file scores against it as it is
        detections = [dict(d, image_id=original[d["image_id"]]) for d in detections]
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
