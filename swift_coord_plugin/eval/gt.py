"""Ground-truth COCO instances files as tools write them -> a ``COCO`` object pycocotools can score.

Public: ``GtError``, ``GtRepairs``, ``FEDERATED_KEYS``, ``federated_problem``, ``check_and_repair``,
``load_coco_and_repairs``. Design notes: ``docs/design/eval_gt.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from pycocotools.coco import COCO

from ..data.coco_reader import CocoFormatError, read_instances
from .pycoco import quiet


class GtError(ValueError):
    """A ground-truth file the scorer cannot score; the message names the file, the record and the field."""


@dataclass
class GtRepairs:
    """What ``load_coco_and_repairs`` filled in, by field."""

    area_filled: int = 0
    iscrowd_filled: int = 0
    annotation_ids_assigned: int = 0
    annotation_ids_reason: str = ""
    ignore_flagged: int = 0  # annotations with a true "ignore" that are not crowd: scored as ordinary boxes
    # internal image id -> the file's id, when the file's ids are strings (None: the file's ids are used)
    original_image_ids: Optional[Dict[int, Any]] = field(default=None)

    def as_dict(self) -> Dict[str, Any]:
        return {"area_filled_with_box_area": self.area_filled, "iscrowd_filled_with_0": self.iscrowd_filled,
                "annotation_ids_assigned": self.annotation_ids_assigned,
                "annotation_ids_reason": self.annotation_ids_reason or None,
                "image_ids_mapped_to_integers": len(self.original_image_ids or {}),
                "ignore_flagged_scored_as_boxes": self.ignore_flagged}

    def any(self) -> bool:
        return bool(self.area_filled or self.iscrowd_filled or self.annotation_ids_assigned
                    or self.original_image_ids)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


FEDERATED_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


def federated_problem(data: dict, path: str) -> Optional[str]:
    """Why an LVIS-style federated file cannot be scored under COCO rules, or None for a COCO file."""
    for i, im in enumerate(data["images"]):
        keys = [k for k in FEDERATED_KEYS if isinstance(im, dict) and k in im]
        if keys:
            return (f"{path}: images[{i}] (id={im.get('id')!r}) has {' and '.join(keys)}: this is LVIS-style "
                    "federated ground truth, where each image is checked only for some categories. COCO rules (what "
                    "coord-eval computes) count every detection of an unchecked category as a false positive, so "
                    "even a perfect answer scores below 1. Score it with the LVIS API (lvis-api: LVISEval) on the "
                    "detections, or remove the federated fields if the file is exhaustively annotated.")
    return None


def check_and_repair(data: dict, path: str) -> GtRepairs:
    """Check ``data`` (a loaded instances file) in place and fill the optional fields; see the module doc."""
    problem = federated_problem(data, path)
    if problem:
        raise GtError(problem)
    images: Dict[Any, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise GtError(f"{path}: images[{i}] must be an object")
        iid = im.get("id")
        if not (_is_int(iid) or isinstance(iid, str) and iid):
            raise GtError(f"{path}: images[{i}]: id must be an integer or a non-empty string, got {iid!r}")
        if iid in images:
            raise GtError(f"{path}: images[{i}]: duplicate image id {iid!r}")
        for key in ("width", "height"):
            v = im.get(key)
            if not _is_num(v) or v <= 0:
                raise GtError(f"{path}: images[{i}] (id={iid}): {key} must be a positive number, got {v!r}")
        images[iid] = im
    cats = set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise GtError(f"{path}: categories[{i}] needs an integer 'id' and a string 'name', got {c!r}")
        if c["id"] in cats:
            raise GtError(f"{path}: categories[{i}]: duplicate category id {c['id']}")
        cats.add(c["id"])

    repairs = GtRepairs()
    if not all(_is_int(i) for i in images):
        internal = {iid: n for n, iid in enumerate(images, start=1)}
        repairs.original_image_ids = {n: iid for iid, n in internal.items()}
    ids_seen, bad_ids = set(), {"missing": 0, "duplicate": 0, "not a positive integer": 0}
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise GtError(f"{path}: annotations[{i}] must be an object")
        where = f"{path}: annotation id={a.get('id')!r} (annotations[{i}])"
        if not (_is_int(a.get("image_id")) or isinstance(a.get("image_id"), str)) \
                or a["image_id"] not in images:
            raise GtError(f"{where}: image_id {a.get('image_id')!r} is not an image id of the file")
        if not _is_int(a.get("category_id")) or a["category_id"] not in cats:
            raise GtError(f"{where}: category_id {a.get('category_id')!r} is not a category id of the file")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
            raise GtError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise GtError(f"{where}: bbox width and height must be >= 0, got {bbox!r}")
        crowd = a.get("iscrowd")
        if crowd is None:
            a["iscrowd"] = 0
            repairs.iscrowd_filled += 1
        elif crowd not in (0, 1) or isinstance(crowd, float) and not crowd.is_integer():
            raise GtError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
        else:
            a["iscrowd"] = int(crowd)
        if a.get("ignore") and not a["iscrowd"]:
            repairs.ignore_flagged += 1
        area = a.get("area")
        if area is None:
            a["area"] = float(bbox[2]) * float(bbox[3])
            repairs.area_filled += 1
        elif not _is_num(area) or area < 0:
            raise GtError(f"{where}: area must be a number >= 0, got {area!r}")
        aid = a.get("id")
        if aid is None:
            bad_ids["missing"] += 1
        elif not _is_int(aid) or aid <= 0:
            bad_ids["not a positive integer"] += 1
        elif aid in ids_seen:
            bad_ids["duplicate"] += 1
        else:
            ids_seen.add(aid)
    if repairs.original_image_ids:
        internal = {iid: n for n, iid in repairs.original_image_ids.items()}
        for im in data["images"]:
            im["id"] = internal[im["id"]]
        for a in data["annotations"]:
            a["image_id"] = internal[a["image_id"]]
    if any(bad_ids.values()):
        for n, a in enumerate(data["annotations"], start=1):
            a["id"] = n
        repairs.annotation_ids_assigned = len(data["annotations"])
        repairs.annotation_ids_reason = ", ".join(f"{v} {k}" for k, v in bad_ids.items() if v)
    return repairs


def load_coco_and_repairs(path: str):
    """``(COCO, GtRepairs)`` for a COCO instances file, checked and repaired as the module doc says.

    Raises ``GtError`` for a file the scorer cannot score (before any result row is read).
    """
    try:
        data = read_instances(path, skip_polygons=True)
    except CocoFormatError as e:
        raise GtError(str(e)) from None
    repairs = check_and_repair(data, path)
    coco = COCO()
    coco.dataset = data
    with quiet():
        coco.createIndex()
    return coco, repairs

