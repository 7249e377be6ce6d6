"""What an evaluation reads besides the result rows: its settings and its ground truth.

``EvalSettings`` (with ``check``), ``EvalError``, ``load_gt`` (pycocotools' ``COCO``, checked by ``eval.gt``),
``GtImages`` (a result row or a sample -> its GT image), ``load_eval_desc_map`` (``--desc-map``) and
``read_val_data`` (``--val-data``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..data.coco_reader import CocoFormatError, load_desc_map
from .detections import DECODES, SCORES
from .gt import GtError, load_coco_and_repairs
from .results import iter_lines

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


def load_gt(path: str):
    """pycocotools' ``COCO`` for a ground-truth file, checked and with its optional fields filled
    (``eval.gt``; the repairs are in ``coco.coord_repairs``). Raises ``EvalError`` naming the record."""
    try:
        coco, repairs = load_coco_and_repairs(path)
    except GtError as e:
        raise EvalError(str(e)) from None
    coco.coord_repairs = repairs
    return coco


def detections_on_internal_ids(coco_gt, detections: List[dict], path: str) -> List[dict]:
    """``detections`` (COCO results rows as ``detections.json`` carries them: the ground-truth file's own image
    ids, strings for a file with string ids) with the evaluator's integer ids of ``coco_gt`` (``load_gt``), as
    ``run_cocoeval`` needs them. Rows are copied only where the id changes. Raises ``EvalError`` naming ``path``
    and the first image id the ground truth does not have."""
    images = GtImages(coco_gt)
    out = []
    for i, d in enumerate(detections):
        gid = images.internal_id(d.get("image_id"))
        if gid is None:
            raise EvalError(f"{path}: detection {i}: image_id {d.get('image_id')!r} is not an image of the ground "
                            "truth it was scored against")
        out.append(d if gid == d["image_id"] else dict(d, image_id=gid))
    return out


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


def load_eval_desc_map(spec: Optional[str]):
    """``(desc_map or None, where it came from)``. ``spec``: what ``coord-prepare-coco --desc-map`` took
    (a JSON file or inline JSON), or the converter's ``<out>.summary.json``, which records the map it used."""
    if not spec:
        return None, None
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
