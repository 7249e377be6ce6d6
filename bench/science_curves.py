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
import sys
import time
from pathlib import Path

from machine import torch_machine  # bench/machine.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_science import make_task, start_group  # noqa: E402  (the test's task and its training command)


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
    task = work / "task"
    if not (task / "val.jsonl").exists():
        task.mkdir(parents=True, exist_ok=True)
        make_task(task)
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
            proc = start_group(g, int(seed), str(model), task, out, steps=int(steps), eval_steps=a.every,
                               log=Path(str(out) + ".log"))
            running.append((proc, out, time.time()))
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
