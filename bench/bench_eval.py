"""Benchmark of coord-eval: reading + parsing + converting result rows against COCOeval itself.

A 5k-image result set is made by replicating coco128 (ground truth and answers) ``--copies`` times under
new image ids and file names. Each answer holds the image's GT boxes, quantised, in the codec's order,
with a random confidence carried as coordinate-token log-probabilities. Three variants:

* ``text``:      no logprobs (argmax, constant scores) - the cheapest rows;
* ``logprobs``:  logprobs with top-k alternatives, argmax + logprob scores;
* ``coordexp``:  the same rows decoded by CoordExp.

Usage: ``python bench/bench_eval.py [--copies 40] [--top-k 5] [--coco128 PATH]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from swift_coord_plugin.eval.scoring import EvalSettings, evaluate_results
from swift_coord_plugin.eval.synthetic import quantised_objects, response_row

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GT = REPO.parent / "shared" / "data" / "coco128" / "annotations" / "instances_train2017.json"


def replicate(gt: dict, copies: int) -> dict:
    step = 10 ** (len(str(max(i["id"] for i in gt["images"]))) + 1)
    images, anns = [], []
    for c in range(copies):
        for img in gt["images"]:
            images.append(dict(img, id=img["id"] + c * step, file_name=f"c{c:03d}_{img['file_name']}"))
        for a in gt["annotations"]:
            anns.append(dict(a, id=a["id"] + c * step * 100, image_id=a["image_id"] + c * step))
    return dict(gt, images=images, annotations=anns)


def write_results(gt: dict, path: str, logprobs: bool, top_k: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    boxes = [dict(a, score=rng.uniform(0.05, 1.0)) for a in gt["annotations"]]
    objs = quantised_objects(gt, boxes)
    with open(path, "w") as f:
        for img in gt["images"]:
            f.write(json.dumps(response_row(img, objs.get(img["id"], []), logprobs=logprobs, top_k=top_k)) + "\n")
    return os.path.getsize(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco128", default=str(DEFAULT_GT))
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--top-k", type=int, default=5)
    args = ap.parse_args()
    with open(args.coco128) as f:
        base = json.load(f)
    gt = replicate(base, args.copies)
    print(f"# {len(gt['images'])} images, {len(gt['annotations'])} GT boxes; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| variant | results file | read+parse+convert s | COCOeval s | ratio | CPU s: rows / COCOeval | "
          "CPU ratio | AP |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = os.path.join(tmp, "gt.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        variants = [("text", False, EvalSettings()),
                    ("logprobs", True, EvalSettings()),
                    ("coordexp", True, EvalSettings(decode="coordexp"))]
        files = {}
        for name, lp, settings in variants:
            if lp not in files:
                files[lp] = os.path.join(tmp, f"results_{int(lp)}.jsonl")
                write_results(gt, files[lp], lp, args.top_k)
            size = os.path.getsize(files[lp])
            t0 = time.perf_counter()
            ev = evaluate_results(files[lp], gt_path, settings, progress=False)
            wall = time.perf_counter() - t0
            t = ev.report["timing_s"]
            print(f"| {name} | {size / 1e6:.0f} MB | {t['read_parse_convert']:.2f} | {t['cocoeval']:.2f} | "
                  f"{t['read_parse_convert'] / t['cocoeval']:.0%} | {t['read_parse_convert_cpu']:.2f} / "
                  f"{t['cocoeval_cpu']:.2f} | {t['read_parse_convert_cpu'] / t['cocoeval_cpu']:.0%} | "
                  f"{ev.report['metrics']['AP']:.4f} |  (whole call {wall:.1f} s)")


if __name__ == "__main__":
    main()
