"""The comparison's pictures (matplotlib, Agg backend): curves, bars, histograms and the image gallery.

Every function writes one PNG and returns True, or returns False (nothing written) when no run has
the data. Colours follow the group (``group_colors``); runs of one group (seeds) share a colour and
differ in line style. matplotlib is an optional extra (``pip install .[plots]``), so it is imported when a
picture is drawn.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..core.samples import row_meta


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_colors(groups: Sequence[str]) -> Dict[str, str]:
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    return {g: cycle[i % len(cycle)] for i, g in enumerate(groups)}


_STYLES = ["-", "--", ":", "-."]


def plot_curves(series: Sequence[Tuple[str, str, str, Dict[str, Tuple[List[int], List[float]]]]],
                panels: Sequence[Tuple[str, str]], out_png: str, title: str, ncols: int = 4) -> bool:
    """``series``: (run name, group, colour, {key: (steps, values)}); ``panels``: (key, panel title)."""
    if not any(s[3].get(k, ([], []))[0] for s in series for k, _ in panels):
        return False
    plt = _plt()
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    seen: Dict[str, int] = {}
    style = {}
    for name, group, _, _ in series:
        style[name] = _STYLES[seen.get(group, 0) % len(_STYLES)]
        seen[group] = seen.get(group, 0) + 1
    for ax, (key, ptitle) in zip(axes.flat, panels):
        for name, group, color, curves in series:
            xs, ys = curves.get(key, ([], []))
            if xs:
                ax.plot(xs, ys, style[name], color=color, marker="o" if len(xs) < 30 else None, ms=3, label=name)
        ax.set_title(ptitle, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged by any run", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True


def plot_metric_bars(groups: Sequence[str], colors: Dict[str, str], metrics: Sequence[str],
                     mean: Dict[str, Dict[str, Optional[float]]], std: Dict[str, Dict[str, Optional[float]]],
                     out_png: str, title: str, ylabel: str) -> bool:
    """Grouped bars, one bar per group and metric, with ``std`` as error bars (seeds)."""
    if not any(mean[g].get(m) is not None for g in groups for m in metrics):
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(metrics) * max(1, len(groups)) / 1.5), 4.2))
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        vals = [max(mean[g].get(m) or 0.0, 0.0) for m in metrics]
        errs = [std[g].get(m) or 0.0 for m in metrics]
        ax.bar([j + i * width for j in range(len(metrics))], vals, width, yerr=errs, color=colors[g], label=g,
               capsize=2)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=45 if len(metrics) > 8 else 0, ha="right" if len(metrics) > 8 else "center",
                       fontsize=8 if len(metrics) > 8 else 10)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True


def plot_iou_histograms(hists: Sequence[Tuple[str, str, List[float], List[int]]], out_png: str) -> bool:
    """``hists``: (run name, colour, bin edges, counts) from ``report.json``'s ``matched_iou``; overlaid as steps."""
    hists = [h for h in hists if h[3] and sum(h[3]) > 0]
    if not hists:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, color, edges, counts in hists:
        ax.stairs(counts, edges, color=color, lw=2, label=f"{name} (n={sum(counts)})")
    ax.set_xlabel("IoU of a matched detection with its GT box (matched at IoU >= 0.5)")
    ax.set_ylabel("detections")
    ax.set_title("IoU of matched detections, per run", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return True


def image_paths_from_results(results_path: Optional[str]) -> Dict[object, str]:
    """image id as the row writes it (the ground-truth file's own id: an int or a string) -> image file, for
    each row of a ``swift infer`` result file that has both."""
    out: Dict[object, str] = {}
    if not results_path or not os.path.isfile(results_path):
        return out
    with open(results_path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            img = row.get("images")
            if isinstance(img, list) and img:
                img = img[0]
            if isinstance(img, dict):
                img = img.get("path")
            iid = row_meta(row).get("image_id")
            if isinstance(img, str) and iid is not None and os.path.isfile(img):
                out.setdefault(iid, img)
    return out


def draw_gallery_image(image_path: str, gt_boxes: Sequence[Tuple[Sequence[float], str]],
                       panels: Sequence[Tuple[str, str, Sequence[Tuple[Sequence[float], str, float]]]],
                       out_png: str, title: str, max_boxes: int = 30) -> None:
    """One image side by side per group: GT boxes (white, dashed) and the group's detections (its colour,
    labelled ``category score``). Boxes are COCO ``[x, y, w, h]`` in pixels; ``panels``: (group, colour,
    detections), each showing at most ``max_boxes`` best-scored detections."""
    from matplotlib.patches import Rectangle

    plt = _plt()
    with Image.open(image_path) as im:
        img = np.asarray(im.convert("RGB"))
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
    for ax, (group, color, dets) in zip(axes[0], panels):
        ax.imshow(img)
        for (x, y, w, h), name in gt_boxes:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="white", lw=1.5, ls="--"))
        dets = sorted(dets, key=lambda d: -d[2])[:max_boxes]
        for (x, y, w, h), name, score in dets:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=color, lw=1.5))
            ax.text(x, y, f"{name} {score:.2f}", color="white", fontsize=6, va="bottom",
                    bbox=dict(facecolor=color, alpha=0.7, pad=0.5, lw=0))
        ax.set_title(f"{group}: {len(dets)} detections", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}  (GT: white dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
