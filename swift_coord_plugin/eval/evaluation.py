"""What one evaluation returns (``Evaluation``) and the edges of its matched-IoU histogram; shared by
``scoring`` (which makes it) and ``plots`` (which draws it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

IOU_HIST_EDGES = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))  # 0.50, 0.55, ..., 1.00


@dataclass
class Evaluation:
    report: dict
    detections: List[dict]
    coco_gt: object = None
    coco_eval: object = None
    gt_boxes_norm: List[Sequence[float]] = field(default_factory=list)
    matched_ious: List[float] = field(default_factory=list)
