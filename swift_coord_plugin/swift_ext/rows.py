"""What the ``coord`` dataset, the checks of its arguments and the template share (no ms-swift import).

``DATASET_NAME`` (``--dataset coord:PATH``), ``BINS_TYPE`` (the ``bbox_type`` of rows whose boxes the
dataset preprocessor already quantised), ``unescape_path`` (``%23`` in a ``coord:`` path) and ``coco_json_message``.
"""
from __future__ import annotations

import re

DATASET_NAME = "coord"
# bbox_type of rows whose boxes the dataset preprocessor already quantised (see dataset.py, template.py).
BINS_TYPE = "coord_bins"


def coco_json_message(path: str) -> str:
    return (f"{path} is a COCO instances JSON, not unified samples (one JSON object per line with 'image' and "
            f"'objects'). Convert it first: coord-prepare-coco --ann {path} --images IMAGE_DIR --out train.jsonl, "
            "then --dataset coord:train.jsonl")


def unescape_path(path: str) -> str:
    """``%23`` -> ``#`` in a ``coord:`` path: ms-swift reads ``#N`` as a sample count, so a real ``#`` is
    written ``%23`` (``%25`` for a real ``%``)."""
    return re.sub(r"%(23|25)", lambda m: "#" if m.group(1) == "23" else "%", path)
