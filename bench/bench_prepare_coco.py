"""Benchmark of ``coord-prepare-coco`` on a COCO-train-sized annotation file.

Builds the file by replicating coco128's real records with fresh image and annotation ids
(``--replicas 922``: 118,016 images and 865,758 annotations, about 513 MB, against train2017's
118,287 / 860,001 / 448 MB), into a temporary folder. Every replica's ``file_name`` still points at a
real coco128 image, so the existence checks pass. Then it runs the command line on it, as a user
would, and prints the machine, the command, the wall time and images/s. Exit status 1 when the wall
time is over ``--target``.

    python bench/bench_prepare_coco.py [--replicas 922] [--full-json] [--target 30]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COCO128 = REPO.parent / "shared" / "data" / "coco128"


def build_replicated(coco128: Path, replicas: int, dst: Path) -> dict:
    """Write ``replicas`` copies of coco128's instances with fresh ids; returns counts."""
    with open(coco128 / "annotations" / "instances_train2017.json") as f:
        src = json.load(f)
    # Serialise each record once without its ids, then only the ids change per replica.
    image_rest = [(im["id"], json.dumps({k: v for k, v in im.items() if k != "id"})[1:-1]) for im in src["images"]]
    ann_rest = [(a["image_id"], json.dumps({k: v for k, v in a.items() if k not in ("id", "image_id")})[1:-1])
                for a in src["annotations"]]
    images, annotations = [], []
    next_image = next_ann = 0
    for r in range(replicas):
        fresh = {}
        for old_id, rest in image_rest:
            next_image += 1
            fresh[old_id] = next_image
            images.append(f'{{"id": {next_image}, {rest}}}')
        for old_image, rest in ann_rest:
            next_ann += 1
            annotations.append(f'{{"id": {next_ann}, "image_id": {fresh[old_image]}, {rest}}}')
    text = ('{"info": %s, "licenses": %s, "categories": %s,\n"images": [\n%s\n],\n"annotations": [\n%s\n]}\n'
            % (json.dumps(src["info"]), json.dumps(src["licenses"]), json.dumps(src["categories"]),
               ",\n".join(images), ",\n".join(annotations)))
    dst.write_text(text)
    return {"images": len(images), "annotations": len(annotations), "bytes": len(text)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2 ** 20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPU cores{mem}, "
            f"Python {platform.python_version()}")


def decode_cost(coco128: Path, train_images: int = 118_287) -> int:
    """The full-decode part of the image check on coco128's distinct files, scaled to COCO train.

    The replicated benchmark file points at 128 distinct files, so the conversion decodes each once;
    this measures what 118k distinct files would cost: seconds per file with all CPUs, times 118,287."""
    sys.path.insert(0, str(REPO))
    from swift_coord_plugin.data import images as image_rules

    paths = sorted(str(p) for p in (coco128 / "images").glob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        workers = os.cpu_count() or 1
        t0 = time.perf_counter()
        problems = image_rules.decode_problems(paths, image_rules.DecodeCache(os.path.join(tmp, "c.jsonl")),
                                               workers=workers)
        par = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p in paths:
            image_rules.header(p)
        head = time.perf_counter() - t0
    bad = sum(v is not None for v in problems.values())
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"machine:   {machine()}; load average {load}")
    print(f"decode:    {len(paths)} coco128 files ({bad} bad) in {par:.2f} s with {workers} processes "
          f"(worker start-up included) -> {par / len(paths) * 1000:.1f} ms/file")
    print(f"header:    {head / len(paths) * 1000:.2f} ms/file (the check run at every load)")
    print(f"scaled:    {train_images:,} files: decode {par / len(paths) * train_images / 60:.1f} min once, "
          f"header {head / len(paths) * train_images:.0f} s per load")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco128", type=Path, default=DEFAULT_COCO128, help="coco128 folder (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=922, help="copies of coco128 (922: about 118k images)")
    p.add_argument("--full-json", action="store_true", help="pass --full-json (parse polygons too)")
    p.add_argument("--target", type=float, default=30.0, help="seconds the whole conversion may take")
    p.add_argument("--decode-only", action="store_true",
                   help="only time the image check's full decode of coco128's distinct images (fresh cache, all "
                        "CPUs) and scale it to COCO train2017's 118,287 images")
    args = p.parse_args(argv)
    if args.decode_only:
        return decode_cost(args.coco128)
    if not (args.coco128 / "annotations" / "instances_train2017.json").exists():
        print(f"coco128 not found at {args.coco128} (--coco128)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="bench_prepare_coco_") as tmp:
        ann = Path(tmp) / "instances_replicated.json"
        t0 = time.perf_counter()
        counts = build_replicated(args.coco128, args.replicas, ann)
        build_s = time.perf_counter() - t0
        out = Path(tmp) / "train.jsonl"
        cmd = [sys.executable, "-m", "swift_coord_plugin.cli.prepare_coco", "--ann", str(ann),
               "--images", str(args.coco128 / "images"), "--out", str(out), "--no-progress"]
        if args.full_json:
            cmd.append("--full-json")
        t0 = time.perf_counter()
        # a fresh decode cache: the run pays the image check's full decode (of coco128's 128 distinct files)
        env = dict(os.environ, COORD_IMAGE_CHECK_CACHE=os.path.join(tmp, "image_check_cache"))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 2
        with open(out.with_name("train.summary.json")) as f:
            summary = json.load(f)
        out_bytes = out.stat().st_size

    print(f"machine:   {machine()}")
    print(f"input:     {counts['images']} images, {counts['annotations']} annotations, "
          f"{counts['bytes'] / 1e6:.0f} MB ({args.replicas} x coco128, built in {build_s:.1f} s)")
    print(f"command:   {shlex.join(cmd)}")
    print(f"output:    {summary['images_written']} samples, {summary['objects_kept']} objects, "
          f"{out_bytes / 1e6:.0f} MB; dropped objects {summary['dropped_objects']}")
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in summary["seconds"].items())
    check = summary.get("image_check") or {}
    if check:
        stages += (f"; image check {check['seconds']:.1f} s ({check['files']} distinct files, "
                   f"{check['decoded']} decoded)")
    print(f"stages:    {stages} (process start-up included in wall time only)")
    print(f"wall time: {wall:.1f} s  ->  {counts['images'] / wall:,.0f} images/s")
    ok = wall <= args.target
    print(f"target:    <= {args.target:.0f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
