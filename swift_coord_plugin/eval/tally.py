"""The row pass: every result row read, parsed, matched to its GT image and turned into detections.

``_Tally`` counts and keeps what the report needs (``add`` takes one parsed row; ``choose_score`` and
``detections`` once every row is seen); ``_read_all`` feeds it a results file.
"""
from __future__ import annotations

import gc
import math
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional

from tqdm import tqdm

from ..core import codec
from ..data.images import stored_size
from .categories import CategoryMapper
from .detections import DecodeStats, coco_bbox, decode_bins, object_score, spread_score
from .inputs import MAX_LISTED, EvalError, EvalSettings, GtImages
from .slots import SlotsError, load as load_slots, slots_path
from .results import RowPrediction, count_lines, iter_lines, merge_counts, read_row


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
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
