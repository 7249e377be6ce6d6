"""``coord-prepare-coco``: COCO instances JSON -> unified detection samples (JSONL).

Only argument parsing, the progress bar and printing live here; the rules are in
``swift_coord_plugin.data.coco`` (reading: ``data.coco_reader``) and documented in ``docs/data.md``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from tqdm import tqdm

from ..data import coco, coco_reader
from ..environment import order_policy_setting


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coord-prepare-coco",
        description="Convert a COCO instances JSON into unified detection samples, one JSON object per line: "
                    '{"image", "image_id", "width", "height", "objects": [{"desc", "bbox": [x1, y1, x2, y2]}]} '
                    "with boxes normalised to [0, 1], ordered top-left to bottom-right and capped. "
                    "A summary is printed and written next to the output (<out stem>.summary.json).")
    p.add_argument("--ann", required=True, help="COCO instances JSON (e.g. instances_train2017.json)")
    p.add_argument("--images", required=True, help="folder the images' file_name entries are relative to")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--max-objects", type=int, default=coco.DEFAULT_MAX_OBJECTS,
                   help="objects kept per image (default %(default)s; 0: no cap)")
    p.add_argument("--cap-policy", choices=coco.CAP_POLICIES, default="area",
                   help="which objects the cap keeps: 'area' the largest boxes (default), "
                        "'scan' the first ones in reading order")
    p.add_argument("--order", default=None, metavar="POLICY",
                   help="object order policy (y1x1 | x1y1 | random, or a registered one; default: the COORD_ORDER "
                        "setting, else y1x1). 'random' writes the y1x1 order: training draws the permutations")
    p.add_argument("--desc-map", metavar="FILE_OR_JSON",
                   help='JSON object {category id or name: description} replacing category names, '
                        'as a file or inline (e.g. \'{"1": "a person"}\')')
    p.add_argument("--drop-empty", action="store_true",
                   help="drop images left with no object (default: keep them with an empty target)")
    p.add_argument("--skip-missing", action="store_true",
                   help="drop and count images whose file is missing (default: stop with an error naming them)")
    p.add_argument("--no-image-check", action="store_true",
                   help="skip the image check (stored size vs width/height and EXIF orientation, processor "
                        "limits, full decode; parallel and cached by file+mtime+size, so paid once)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="drop and count images that fail the image check (default: stop with an error naming them)")
    p.add_argument("--workers", type=int, default=None, help="processes of the image decode (default: all CPUs)")
    p.add_argument("--full-json", action="store_true",
                   help="parse polygon segmentations too (syntax-checks them; about 3x slower to load)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        desc_map = coco_reader.load_desc_map(args.desc_map) if args.desc_map else None
        order = args.order if args.order is not None else order_policy_setting().name  # the COORD_ORDER setting
        options = coco.ConvertOptions(max_objects=args.max_objects, cap_policy=args.cap_policy,
                                      drop_empty=args.drop_empty, skip_missing=args.skip_missing,
                                      check_images=not args.no_image_check, skip_bad_images=args.skip_bad_images,
                                      workers=args.workers, desc_map=desc_map, order=order)
    except (coco_reader.CocoFormatError, ValueError) as e:
        print(f"coord-prepare-coco: error: {e}", file=sys.stderr)
        return 2

    bars = []

    def progress_factory(total: int):
        bar = tqdm(total=total, unit="img", desc="converting", disable=args.no_progress, file=sys.stderr)
        bars.append(bar)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()  # the rate shown is the conversion's, not the writing's

        return update

    if not args.no_progress:
        print(f"reading {args.ann} ...", file=sys.stderr, flush=True)
    try:
        summary = coco.prepare_coco(args.ann, args.images, args.out, options,
                                    progress_factory=progress_factory, skip_polygons=not args.full_json)
    except coco_reader.CocoFormatError as e:
        print(f"coord-prepare-coco: error: {e}", file=sys.stderr)
        return 2
    finally:
        for bar in bars:
            bar.close()
    print(coco.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
