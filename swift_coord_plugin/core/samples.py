"""Validation of unified detection samples (no ms-swift import).

A unified sample is one JSON object per line::

    {"image": "/abs/path.jpg", "objects": [{"desc": "dog", "bbox": [x1, y1, x2, y2]}, ...],
     "image_id": 42, "width": 640, "height": 480}      # the last three optional, kept for evaluation

with boxes normalised to [0, 1] (see ``codec``). ``fields_problem`` says what is wrong with a sample's
fields (values only; the checks of its image file: ``data.images.sample_problem``), so that callers can raise
an error naming the file and line, or drop and count it. ``row_meta``, ``row_identity`` and ``row_key``: what
identifies a row across requests, results and slots files.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Tuple

from . import codec

# Reasons a sample is rejected (the keys of drop counts).
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"  # header or full decode fails, or a mode without a defined display
IMAGE_SIZE_MISMATCH = "image_size_mismatch"  # stored pixel grid != declared width/height (EXIF included)
UNSUPPORTED_IMAGE = "unsupported_image"  # a size Qwen-VL's image processor refuses
BAD_BBOX = "bad_bbox"
BAD_DESC = "bad_desc"
BAD_FORMAT = "bad_format"
SAMPLE_REASONS = (BAD_FORMAT, MISSING_IMAGE, UNREADABLE_IMAGE, IMAGE_SIZE_MISMATCH, UNSUPPORTED_IMAGE, BAD_BBOX,
                  BAD_DESC)

# Where the dataset preprocessor keeps a sample's image_id / width / height in an ms-swift row:
# row["chat_template_kwargs"][EVAL_META_KEY] (a standard column that survives into `swift infer` results).
EVAL_META_KEY = "coord_meta"


def row_meta(row) -> dict:
    """``{"image_id", "width", "height"}`` (those present) of an ms-swift row / ``swift infer`` result line."""
    if not isinstance(row, dict):
        return {}
    kwargs = row.get("chat_template_kwargs")
    if isinstance(kwargs, str):  # some writers serialise Json columns as text
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            kwargs = None
    meta = kwargs.get(EVAL_META_KEY) if isinstance(kwargs, dict) else None
    if not isinstance(meta, dict):
        meta = {k: row[k] for k in ("image_id", "width", "height") if row.get(k) is not None}
    return dict(meta)


def row_identity(image_id, images, base_dir: str = "") -> Optional[Tuple[str, object]]:
    """The identity of a row, shared by an inference request, its ``swift infer`` result line, its slots-file
    line and its unified sample: ``("image_id", image_id)`` when ``image_id`` is not None, else
    ``("image", path)``, else None (no id and no image path, e.g. an in-memory image).

    ``images`` is a path, a ``{"path": ...}`` dict (ms-swift's image column) or a list of those. A row with
    several images is identified by its first one (a list's first entry; an empty list has no path). The path
    is stripped of surrounding whitespace; a relative one is taken from ``base_dir`` when given (the samples
    file's folder, as the dataset loader does) and kept relative otherwise; then ``os.path.normpath`` (a
    string operation: no file is looked at). ``row_key`` (JSON) and ``eval.shards`` (tuples) derive from it."""
    if image_id is not None:
        return ("image_id", image_id)
    if isinstance(images, (list, tuple)):
        images = images[0] if images else None
    if isinstance(images, dict):
        images = images.get("path")
    if not isinstance(images, str) or not images.strip():
        return None
    path = images.strip()
    if base_dir and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return ("image", os.path.normpath(path))


def row_key(row) -> Optional[str]:
    """``row_identity`` of an ms-swift row / ``swift infer`` result line (its ``image_id`` from ``row_meta``,
    its ``images``) as a JSON string, e.g. ``'["image_id", 42]'`` or ``'["image", "/a/b.jpg"]'``; ``None``
    for a row with neither. ``swift_ext.slots`` writes it and ``eval.slots`` joins on it."""
    identity = row_identity(row_meta(row).get("image_id"), row.get("images") if isinstance(row, dict) else None)
    return json.dumps(list(identity)) if identity is not None else None


def fields_problem(sample) -> Optional[Tuple[str, str]]:
    """``(reason, message)`` for the first problem of the fields of ``sample`` (JSON shape, ``image`` a
    non-empty string, each object's ``desc`` and ``bbox``, ``width``/``height`` positive numbers when
    present), or None. Values only: no file is looked at; with the image file checks: ``data.images.sample_problem``."""
    if not isinstance(sample, dict):
        return BAD_FORMAT, f"a sample must be a JSON object, got {type(sample).__name__}"
    image = sample.get("image")
    if not isinstance(image, str) or not image:
        return BAD_FORMAT, "missing or non-string 'image'"
    objects = sample.get("objects")
    if objects is None:
        objects = []
    if not isinstance(objects, list):
        return BAD_FORMAT, f"'objects' must be a list, got {type(objects).__name__}"
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            return BAD_FORMAT, f"objects[{i}] must be an object with 'desc' and 'bbox'"
        p = codec.desc_problem(obj.get("desc"))
        if p:
            return BAD_DESC, f"objects[{i}]: {p}"
        p = codec.bbox_problem(obj.get("bbox"))
        if p:
            return BAD_BBOX, f"objects[{i}]: {p}"
    for key in ("width", "height"):
        v = sample.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            return BAD_FORMAT, f"'{key}' must be a positive number, got {v!r}"
    return None
