"""A synthetic detection set with held-out splits: coloured shapes on textured backgrounds, as COCO files.

Public API: ``ShapesConfig``, ``draw_image``, ``make_split``, ``make_shapes``. Used by ``coord-make-shapes``
and the demo study (``shell/demo.sh``); the chain after it is the real one (converter, ``swift sft``,
``swift infer``, ``coord-eval``). Drawing is PIL's (``ImageDraw``); every box and area is taken from the
pixels of the object that stay *visible* after the shapes drawn later, and each annotation carries that
visible mask as COCO RLE (``pycocotools.mask``), so a reader can check box and area against it.
See docs/study.md.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# (name, RGB) per class: multi-token names (" red", " disk"), colours far apart.
CLASSES: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("red disk", (220, 40, 40)),
    ("green triangle", (40, 170, 60)),
    ("blue square", (40, 80, 220)),
    ("yellow cross", (230, 200, 30)),
)
# COCO's size buckets, in pixels² of area (pycocotools' areaRng).
SMALL_MAX, MEDIUM_MAX = 32 ** 2, 96 ** 2


@dataclass(frozen=True)
class ShapesConfig:
    """How one split is drawn.

    ``image_size``: side of the square images, pixels. ``min_objects``/``max_objects``: objects per image
    (uniform). ``min_side``/``max_side``: side of a shape's drawn extent as a fraction of the image side,
    log-uniform between them. ``min_visible``: a layout in which a shape keeps less than this fraction of its
    drawn pixels visible is redrawn. ``noise``: standard deviation of the background's pixel noise (0..255).
    ``grid``: when > 0, shape centres snap to the cell centres of a ``grid`` x ``grid`` grid (an easy task: a few
    positions per coordinate, each seen often).
    """

    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 2
    min_side: float = 0.18
    max_side: float = 0.8
    min_visible: float = 0.5
    noise: float = 10.0
    grid: int = 0
    classes: Tuple[str, ...] = tuple(name for name, _ in CLASSES)

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f"image_size {self.image_size}: at least 32 pixels")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"objects per image {self.min_objects}..{self.max_objects}: need 1 <= min <= max")
        if not 0.0 < self.min_side <= self.max_side <= 1.0:
            raise ValueError(f"sides {self.min_side}..{self.max_side}: need 0 < min <= max <= 1")
        unknown = [c for c in self.classes if c not in dict(CLASSES)]
        if unknown or not self.classes:
            raise ValueError(f"classes {list(self.classes)}: choose from {[n for n, _ in CLASSES]}")


def _background(rng: np.random.Generator, size: int, noise: float) -> np.ndarray:
    """A linear gradient between two muted random colours, in a random direction, plus pixel noise."""
    c0, c1 = rng.uniform(90, 200, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.normal(0.0, noise, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(kind: str, size: int, cx: float, cy: float, side: float, aspect: float) -> np.ndarray:
    """Boolean ``[size, size]`` mask of one shape drawn by PIL (centre and side in pixels)."""
    w, h = side * aspect, side / aspect
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    canvas = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "red disk":
        draw.ellipse([x1, y1, x2, y2], fill=1)
    elif kind == "green triangle":
        draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=1)
    elif kind == "blue square":
        draw.rectangle([x1, y1, x2, y2], fill=1)
    elif kind == "yellow cross":
        tw, th = w / 3, h / 3
        draw.rectangle([x1, cy - th / 2, x2, cy + th / 2], fill=1)
        draw.rectangle([cx - tw / 2, y1, cx + tw / 2, y2], fill=1)
    else:
        raise ValueError(f"unknown shape class {kind!r}")
    return np.array(canvas, dtype=bool)


def draw_image(rng: np.random.Generator, config: ShapesConfig, max_tries: int = 50):
    """One image: ``(pixels uint8 [S, S, 3], instance map int16 [S, S], kinds)``.

    ``instance map``: index into ``kinds`` of the shape visible at each pixel, -1 for background. Shapes are
    drawn in order, a later one covering an earlier one; a layout where some shape keeps less than
    ``config.min_visible`` of its drawn pixels, or none, is redrawn (up to ``max_tries`` times per shape,
    then the shape is left out). Returns at least one shape.
    """
    colours = dict(CLASSES)
    s = config.image_size
    img = _background(rng, s, config.noise)
    inst = np.full((s, s), -1, dtype=np.int16)
    drawn: List[int] = []
    kinds: List[str] = []
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    lo, hi = math.log(config.min_side), math.log(config.max_side)
    while len(kinds) < n:
        for _ in range(max_tries):
            kind = config.classes[int(rng.integers(len(config.classes)))]
            side = math.exp(rng.uniform(lo, hi)) * s
            aspect = math.exp(rng.uniform(-0.3, 0.3)) if kind != "red disk" else 1.0
            half_w, half_h = side * aspect / 2, side / aspect / 2
            cx = rng.uniform(min(half_w, s / 2), max(s - half_w, s / 2))
            cy = rng.uniform(min(half_h, s / 2), max(s - half_h, s / 2))
            if config.grid > 0:
                cx, cy = ((rng.integers(config.grid, size=2) + 0.5) * s / config.grid).tolist()
            mask = _shape_mask(kind, s, cx, cy, side, aspect)
            if mask.sum() < 4:
                continue
            trial = inst.copy()
            trial[mask] = len(kinds)
            visible = np.bincount(trial[trial >= 0].ravel(), minlength=len(kinds) + 1)
            counts = drawn + [int(mask.sum())]
            if all(visible[i] >= config.min_visible * counts[i] for i in range(len(counts))):
                break
        else:
            break  # no room for another shape: fewer objects in this image
        inst = trial
        drawn.append(int(mask.sum()))
        kinds.append(kind)
        jitter = rng.integers(-20, 21, size=3)
        img[mask] = np.clip(np.array(colours[kind]) + jitter, 0, 255).astype(np.uint8)
    if not kinds:
        raise RuntimeError("no shape fits the image: lower min_side or min_visible")
    return img, inst, kinds


def visible_box(inst: np.ndarray, index: int) -> Tuple[List[float], int]:
    """COCO ``[x, y, w, h]`` (pixels, pixel extents: ``w = max col - min col + 1``) and area (pixel count) of the
    visible pixels of shape ``index`` in an instance map; raises ``ValueError`` when none is visible."""
    ys, xs = np.nonzero(inst == index)
    if xs.size == 0:
        raise ValueError(f"shape {index} has no visible pixel")
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)], int(xs.size)


def make_split(out_dir: str, split: str, n_images: int, seed: int, config: ShapesConfig) -> Dict:
    """Draw ``n_images`` images into ``out_dir/images/<split>/`` and write ``annotations/instances_<split>.json``.

    Image ids are 1..n; annotation ``bbox``/``area`` come from the visible pixels (``visible_box``) and
    ``segmentation`` is their compressed RLE. Returns the split's statistics (``split_stats``).
    """
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(out_dir, "images", split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    cat_ids = {name: i + 1 for i, name in enumerate(config.classes)}
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        pixels, inst, kinds = draw_image(rng, config)
        name = f"{split}_{image_id:06d}.png"
        Image.fromarray(pixels).save(os.path.join(img_dir, name))
        images.append({"id": image_id, "file_name": name, "width": config.image_size, "height": config.image_size})
        for index, kind in enumerate(kinds):
            bbox, area = visible_box(inst, index)
            rle = mask_utils.encode(np.asfortranarray((inst == index).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[kind],
                                "bbox": bbox, "area": area, "iscrowd": 0, "segmentation": rle})
    instances = {"info": {"description": f"coord-make-shapes split {split!r}, seed {seed}"},
                 "images": images, "annotations": annotations,
                 "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in cat_ids.items()]}
    with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(instances, f)
    return split_stats(instances)


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])


def split_stats(instances: Dict) -> Dict:
    """Images, objects, mean objects per image, share of boxes per COCO size bucket (by the annotation's area, as
    pycocotools buckets them), share of images with two overlapping boxes, objects per class."""
    by_image: Dict[int, List[dict]] = {im["id"]: [] for im in instances["images"]}
    for a in instances["annotations"]:
        by_image[a["image_id"]].append(a)
    areas = [a["area"] for a in instances["annotations"]]
    n_obj = max(len(areas), 1)
    names = {c["id"]: c["name"] for c in instances["categories"]}
    overlapping = sum(any(_overlap(x["bbox"], y["bbox"]) for i, x in enumerate(anns) for y in anns[i + 1:])
                      for anns in by_image.values())
    return {
        "images": len(by_image), "objects": len(areas),
        "objects_per_image": len(areas) / max(len(by_image), 1),
        "size_share": {"small": sum(a < SMALL_MAX for a in areas) / n_obj,
                       "medium": sum(SMALL_MAX <= a < MEDIUM_MAX for a in areas) / n_obj,
                       "large": sum(a >= MEDIUM_MAX for a in areas) / n_obj},
        "overlapping_image_share": overlapping / max(len(by_image), 1),
        "per_class": {names[c]: sum(a["category_id"] == c for a in instances["annotations"]) for c in names},
    }


@dataclass
class SplitSpec:
    name: str
    n_images: int
    seed: int


def make_shapes(out_dir: str, splits: Sequence[SplitSpec], config: ShapesConfig = ShapesConfig()) -> Dict:
    """Write every split (``make_split``) and ``summary.json`` / ``summary.md`` saying how they were made."""
    seeds = [s.seed for s in splits]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"each split needs its own seed (got {seeds}): a shared seed repeats images across splits")
    stats = {s.name: dict(make_split(out_dir, s.name, s.n_images, s.seed, config), seed=s.seed) for s in splits}
    summary = {"generator": "coord-make-shapes", "config": asdict(config), "splits": stats,
               "how": "each split is drawn from its own numpy seed; no image is shared between splits; boxes and "
                      "areas are the visible pixels of each shape after later shapes are drawn over it"}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(format_summary(summary))
    return summary


def format_summary(summary: Dict) -> str:
    c = summary["config"]
    lines = [f"# Synthetic shapes ({summary['generator']})", "",
             f"{c['image_size']}x{c['image_size']} px images, {c['min_objects']}-{c['max_objects']} objects each, "
             f"sides {c['min_side']:.2f}-{c['max_side']:.2f} of the image (log-uniform), textured background; "
             f"classes: {', '.join(c['classes'])}. {summary['how']}.", "",
             "| split | seed | images | objects/image | small | medium | large | images with overlap |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summary["splits"].items():
        sh = s["size_share"]
        lines.append(f"| {name} | {s['seed']} | {s['images']} | {s['objects_per_image']:.2f} | {sh['small']:.2f} | "
                     f"{sh['medium']:.2f} | {sh['large']:.2f} | {s['overlapping_image_share']:.2f} |")
    return "\n".join(lines) + "\n"
