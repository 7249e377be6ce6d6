"""The best constant predictor: the mean training box of each class, the same for every image (no ms-swift import).

It answers "is the task a task?": a model that ignores the image can still score by predicting where boxes are on
average. Its answers are written as ``swift infer`` result rows (``eval.synthetic``) and scored by ``coord-eval``
like any run. Public API: ``mean_class_boxes``, ``constant_rows``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Mapping, Tuple

import numpy as np

from .synthetic import rows_from_boxes


def mean_class_boxes(instances: Mapping) -> Tuple[Dict[int, List[float]], Dict[int, float]]:
    """Per category id: the mean ``[x1, y1, x2, y2]`` of its non-crowd boxes in image fractions, and its share of
    those boxes (the score the constant predictor gives it). ``instances``: a COCO instances dict. Raises
    ``ValueError`` when no box can be averaged."""
    size = {im["id"]: (float(im["width"]), float(im["height"])) for im in instances["images"]}
    boxes = defaultdict(list)
    for a in instances["annotations"]:
        if a.get("iscrowd", 0):
            continue
        w, h = size[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        boxes[a["category_id"]].append([x / w, y / h, (x + bw) / w, (y + bh) / h])
    if not boxes:
        raise ValueError("no non-crowd box to average")
    total = sum(len(v) for v in boxes.values())
    return ({c: np.mean(v, axis=0).tolist() for c, v in boxes.items()},
            {c: len(v) / total for c, v in boxes.items()})


def constant_rows(train: Mapping, val: Mapping, top_k: int = 20) -> List[dict]:
    """Result rows for every image of ``val`` (a COCO instances dict): one box per training class, its mean training
    box scaled to the image, scored by the class's share of the training boxes. Categories are matched by name."""
    means, shares = mean_class_boxes(train)
    train_names = {c["id"]: c["name"] for c in train["categories"]}
    val_ids = {c["name"]: c["id"] for c in val["categories"]}
    missing = sorted(n for c, n in train_names.items() if c in means and n not in val_ids)
    if missing:
        raise ValueError(f"training classes absent from the evaluation categories: {missing}")
    dets = []
    for im in val["images"]:
        w, h = float(im["width"]), float(im["height"])
        for c, (x1, y1, x2, y2) in means.items():
            dets.append({"image_id": im["id"], "category_id": val_ids[train_names[c]], "score": shares[c],
                         "bbox": [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h]})
    return rows_from_boxes(val, dets, top_k=top_k)


