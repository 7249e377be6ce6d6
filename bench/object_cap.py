"""How much a per-image object cap (``coord-prepare-coco --max-objects N``) takes away from a COCO split.

Converts the instances with the converter's own rules and no cap (crowd regions and degenerate boxes are
not targets, as in training) and counts, for each cap: the images with more objects than the cap, and the
boxes beyond it, as shares of all images and of all target boxes. The boxes beyond the cap are also an
upper bound on what a model trained and decoded with that cap can ever recall: it writes at most N objects
per image, so an image with M > N objects loses at least M - N of them.

    python bench/object_cap.py --ann annotations/instances_val2017.json --images val2017 [--caps 30 50 100]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swift_coord_plugin.data.coco import ConvertOptions, convert_instances, read_instances  # noqa: E402


def cap_table(counts, caps):
    """Rows ``{cap, images_over, images_over_share, boxes_beyond, boxes_beyond_share}`` for per-image
    object counts ``counts``."""
    n_img, n_box = len(counts), sum(counts)
    rows = []
    for cap in caps:
        over = [c for c in counts if c > cap]
        beyond = sum(c - cap for c in over)
        rows.append({"cap": cap, "images_over": len(over), "images_over_share": len(over) / max(n_img, 1),
                     "boxes_beyond": beyond, "boxes_beyond_share": beyond / max(n_box, 1)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann", required=True, help="COCO instances JSON")
    p.add_argument("--images", required=True, help="its image folder (the converter checks the files exist)")
    p.add_argument("--caps", type=int, nargs="+", default=[30, 50, 100])
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    args = p.parse_args(argv)
    conv = convert_instances(read_instances(args.ann), args.images, ConvertOptions(max_objects=0), source=args.ann)
    counts = [len(json.loads(line)["objects"]) for line in conv.lines]
    rows = cap_table(counts, args.caps)
    if args.json:
        print(json.dumps({"ann": args.ann, "images": len(counts), "boxes": sum(counts), "max": max(counts),
                          "caps": rows}, indent=1))
        return 0
    print(f"{args.ann}: {len(counts)} images, {sum(counts)} target boxes (crowd/degenerate excluded: "
          f"{conv.summary.dropped_objects}), at most {max(counts)} per image")
    print("| cap | images over the cap | boxes beyond the cap |\n|---|---|---|")
    for r in rows:
        print(f"| {r['cap']} | {r['images_over']} ({100 * r['images_over_share']:.1f}%) | "
              f"{r['boxes_beyond']} ({100 * r['boxes_beyond_share']:.2f}%) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
