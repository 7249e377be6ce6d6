"""coord-make-shapes OUT: a synthetic detection set (coloured shapes, COCO files) with train, val and selection splits.

    coord-make-shapes OUT --train 2000 --val 200 --select 100 --seed 0     # three splits, each from its own seed
    coord-make-shapes OUT --train 0 --val 500 --val-seed 12345               # a fresh held-out set from any seed

Writes OUT/images/<split>/*.png, OUT/annotations/instances_<split>.json and OUT/summary.{json,md}. Split seeds:
train SEED, val SEED+1 (or --val-seed), select SEED+2 (or --select-seed). See docs/study.md.
"""
from __future__ import annotations

import argparse
import sys
import time

from ..data.shapes import CLASSES, ShapesConfig, SplitSpec, make_shapes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="coord-make-shapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder")
    p.add_argument("--train", type=int, default=2000, help="training images (0: none)")
    p.add_argument("--val", type=int, default=200, help="held-out evaluation images (0: none)")
    p.add_argument("--select", type=int, default=0, help="held-out images for choosing a checkpoint (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-seed", type=int, default=None)
    p.add_argument("--select-seed", type=int, default=None)
    d = ShapesConfig()
    p.add_argument("--image-size", type=int, default=d.image_size, help="image side, pixels")
    p.add_argument("--min-objects", type=int, default=d.min_objects)
    p.add_argument("--max-objects", type=int, default=d.max_objects)
    p.add_argument("--min-side", type=float, default=d.min_side, help="smallest shape side, fraction of the image")
    p.add_argument("--max-side", type=float, default=d.max_side, help="largest shape side, fraction of the image")
    p.add_argument("--classes", nargs="+", default=list(d.classes), choices=[n for n, _ in CLASSES], metavar="CLASS")
    a = p.parse_args(argv)
    try:
        config = ShapesConfig(image_size=a.image_size, min_objects=a.min_objects, max_objects=a.max_objects,
                              min_side=a.min_side, max_side=a.max_side, classes=tuple(a.classes))
        splits = [SplitSpec(name, n, seed) for name, n, seed in (
            ("train", a.train, a.seed),
            ("val", a.val, a.seed + 1 if a.val_seed is None else a.val_seed),
            ("select", a.select, a.seed + 2 if a.select_seed is None else a.select_seed)) if n > 0]
        if not splits:
            raise ValueError("nothing to write: --train, --val and --select are all 0")
        t0 = time.time()
        summary = make_shapes(a.out, splits, config)
    except ValueError as e:
        print(f"[coord-make-shapes] {e}", file=sys.stderr)
        sys.exit(2)
    for name, s in summary["splits"].items():
        print(f"[coord-make-shapes] {name}: {s['images']} images, {s['objects']} objects (seed {s['seed']})")
    print(f"[coord-make-shapes] wrote {a.out} in {time.time() - t0:.1f}s (summary.md says how)")


if __name__ == "__main__":
    main()
