"""coord-constant-baseline: the result file of the best constant predictor (each class's mean training box).

    coord-constant-baseline --train-ann instances_train.json --val-ann instances_val.json --out constant.jsonl
    coord-eval --results constant.jsonl --gt instances_val.json --out constant_eval/

The rows are in ``swift infer``'s format, so ``coord-eval`` scores them like a model's answers.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..data.coco_reader import CocoFormatError, read_instances
from ..eval.constant import constant_rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="coord-constant-baseline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-ann", required=True, help="COCO instances JSON the mean boxes are taken from")
    p.add_argument("--val-ann", required=True, help="COCO instances JSON of the images to answer for")
    p.add_argument("--out", required=True, help="result file (JSONL)")
    a = p.parse_args(argv)
    try:
        rows = constant_rows(read_instances(a.train_ann), read_instances(a.val_ann))
    except (CocoFormatError, ValueError, KeyError, OSError) as e:
        print(f"[coord-constant-baseline] {e}", file=sys.stderr)
        sys.exit(2)
    with open(a.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"[coord-constant-baseline] wrote {len(rows)} rows to {a.out}")


if __name__ == "__main__":
    main()
