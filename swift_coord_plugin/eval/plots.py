"""Optional PNGs of an evaluation (needs matplotlib): matched IoUs, predicted vs GT coordinates.

matplotlib is an optional extra (``pip install .[plots]``), so ``write_plots`` imports it when called.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np

from .pycoco import IOU_HIST_EDGES, Evaluation


def write_plots(out_dir: str, evaluation: Evaluation) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(evaluation.matched_ious, bins=list(IOU_HIST_EDGES), edgecolor="black")
    ax.set_xlabel("IoU with the matched GT box")
    ax.set_ylabel("detections")
    ax.set_title(f"Matched detections at IoU >= 0.5 (n={len(evaluation.matched_ious)})")
    fig.tight_layout()
    p = os.path.join(out_dir, "iou_histogram.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)

    images = {i["id"]: i for i in evaluation.coco_gt.dataset["images"]}
    pred = []
    for d in evaluation.detections:
        img = images[d["image_id"]]
        x, y, w, h = d["bbox"]
        pred.append((x / img["width"], y / img["height"], (x + w) / img["width"], (y + h) / img["height"]))
    pred = np.asarray(pred, dtype=float).reshape(-1, 4)
    gt = np.asarray(evaluation.gt_boxes_norm, dtype=float).reshape(-1, 4)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    edges = np.linspace(0.0, 1.0, 41)
    for j, (ax, name) in enumerate(zip(axes, ("x1", "y1", "x2", "y2"))):
        ax.hist(gt[:, j], bins=edges, alpha=0.5, density=True, label=f"GT (n={len(gt)})")
        ax.hist(pred[:, j], bins=edges, alpha=0.5, density=True, label=f"predicted (n={len(pred)})")
        ax.set_title(name)
        ax.set_xlabel("normalised coordinate")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, "coordinate_distributions.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    paths.append(p)
    return paths
