"""Learning curves of the science test's task: held-out teacher-forced IoU per group, seed and step.

What ``tests/test_science.py`` trains (one disk of a fixed size per 128 px image, its centre on a 6x6 grid; 512
training and 48 held-out images; ``shell/train.sh`` with batch 16, lr 2e-3, cosine, the vision tower trained), with
a held-out evaluation every ``--every`` steps, so that the steps of the test can be chosen where every seed has
learned. Runs ``--parallel`` trainings at a time, one torch thread each, and prints one markdown row per run.

    python bench/science_curves.py --runs a:450:0,a:450:1,b:400:0 --every 50 --out /tmp/curves
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import torch_machine  # bench/machine.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
SCIENCE_ARGS = ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16",
                "--gradient_accumulation_steps", "1", "--learning_rate", "2e-3", "--warmup_ratio", "0.05",
                "--lr_scheduler_type", "cosine", "--weight_decay", "0", "--save_only_model", "true",
                "--logging_steps", "10", "--max_pixels", "65536", "--freeze_vit", "false", "--freeze_aligner", "false",
                "--gradient_checkpointing", "false", "--report_to", "none"]


def make_task(out: Path) -> Path:
    """The science test's task (``tests/test_science.py``'s ``task`` fixture), once."""
    from swift_coord_plugin.data.coco import prepare_coco
    from swift_coord_plugin.data.shapes import ShapesConfig, SplitSpec, make_shapes

    if (out / "val.jsonl").exists():
        return out
    config = ShapesConfig(image_size=128, min_objects=1, max_objects=1, min_side=0.35, max_side=0.35, noise=0.0,
                          grid=6, classes=("red disk",))
    make_shapes(str(out), [SplitSpec("train", 512, 0), SplitSpec("val", 48, 1)], config)
    for split in ("train", "val"):
        prepare_coco(str(out / "annotations" / f"instances_{split}.json"), str(out / "images" / split),
                     str(out / f"{split}.jsonl"))
    return out


def start(group: str, steps: int, seed: int, every: int, model: str, task: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", GROUP=group, CPU="1", MODEL=model, DATA=str(task / "train.jsonl"),
               VAL_DATA=str(task / "val.jsonl"), OUT=str(out), RESUME="0", COORD_INIT_SEED=str(seed),
               COORDEXP_LEAN="true", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MAX_PIXELS="65536", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    args = ["--max_steps", str(steps), "--eval_steps", str(every), "--save_steps", str(steps),
            "--seed", str(42 + seed), "--data_seed", str(42 + seed), *SCIENCE_ARGS]
    out.mkdir(parents=True, exist_ok=True)
    log = open(str(out) + ".log", "w")
    return subprocess.Popen(["bash", str(REPO / "shell" / "train.sh"), *args], env=env, cwd=str(out.parent),
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def curve(out: Path):
    """(step, argmax-box IoU, CoordExp-box IoU) of every held-out evaluation of a run."""
    rows = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    return [(int(str(r["global_step/max_steps"]).split("/")[0]), r["eval_box_iou_argmax"],
             r["eval_box_iou_coordexp"]) for r in rows if "eval_box_iou_argmax" in r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="comma-separated group:steps:seed, e.g. a:450:0,b:400:1")
    p.add_argument("--every", type=int, default=50, help="held-out evaluation every N steps")
    p.add_argument("--parallel", type=int, default=2, help="trainings at a time (one torch thread each)")
    p.add_argument("--out", required=True, help="working folder (task, model, runs)")
    a = p.parse_args(argv)
    from swift_coord_plugin.tiny_model import build_tiny_model

    work = Path(a.out)
    task = make_task(work / "task")
    model = work / "model"
    if not (model / "config.json").exists():
        build_tiny_model(str(model), head_dim=64)
    print(f"# {' '.join(sys.argv)}\n# {torch_machine()}\n")
    print("| run | seconds | held-out IoU argmax / CoordExp, by step |\n|---|---|---|")
    todo = [r.split(":") for r in a.runs.split(",")]
    running = []
    while todo or running:
        while todo and len(running) < a.parallel:
            g, steps, seed = todo.pop(0)
            out = work / "runs" / f"{g}{steps}_seed{seed}"
            running.append((start(g, int(steps), int(seed), a.every, str(model), task, out), out, time.time()))
        time.sleep(5)
        for item in [r for r in running if r[0].poll() is not None]:
            running.remove(item)
            proc, out, t0 = item
            if proc.returncode != 0:
                print(f"| {out.name} | failed ({out}.log) | |", flush=True)
                continue
            points = ", ".join(f"{s}: {x:.3f} / {e:.3f}" for s, x, e in curve(out))
            print(f"| {out.name} | {time.time() - t0:.0f} | {points} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
