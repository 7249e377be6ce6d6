"""``swift sft`` step time of the tiny Qwen3-VL with each loss: ms-swift's stock ``cross_entropy``, groups A, B, C
(standard path) and the lean path (``COORDEXP_LEAN=1``).

Each variant is a real ``swift sft`` run (full fine-tuning, float32, batch 2, ``--steps`` steps, logging every step)
on the same samples; the variants are interleaved over ``--rounds`` rounds. Step time = (elapsed at the last step -
elapsed at the first) / (steps - 1), from ms-swift's per-step ``train_speed(s/it)`` (elapsed / steps) in
``logging.jsonl``: the first step (warm-up) is left out. The tiny model's vocabulary is the real one (152,704 rows)
with a hidden size of 64, so the loss stage weighs more here than in a real model.

    python bench/bench_sft_step.py [--steps 8] [--rounds 2] [--data samples.jsonl]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from machine import torch_machine  # bench/machine.py (the script's folder is on sys.path)

from swift_coord_plugin.core.losses import LOSS_TYPES

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "swift_coord_plugin" / "entry" / "swift_plugin.py"
# the `swift` command next to this python (a virtual environment), else the one on PATH (a wheel kit's bin/)
SWIFT = str(Path(sys.executable).parent / "swift") if (Path(sys.executable).parent / "swift").exists() else \
    (shutil.which("swift") or "swift")
VARIANTS = {"stock": ("cross_entropy", False)}  # name -> (loss type, lean)
VARIANTS.update({f"{lean}{g}": (loss_type, bool(lean)) for lean in ("", "lean ") for g, loss_type in LOSS_TYPES.items()})


def absolute_samples(src: Path, dst: Path) -> None:
    rows = [json.loads(line) for line in open(src) if line.strip()]
    for r in rows:
        if not os.path.isabs(r["image"]):
            r["image"] = str((src.parent / r["image"]).resolve())
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(variant: str, model_dir: str, data: str, out: Path, a) -> float:
    """Seconds per step of one ``swift sft`` run of ``variant`` (float32, no DeepSpeed)."""
    return run_sft(variant, model_dir, data, out, a.steps, a.batch_size, a.max_pixels)["s_per_step"]


def run_sft(variant: str, model_dir: str, data: str, out: Path, steps: int, batch_size: int, max_pixels: int,
            dtype: str = "float32", deepspeed: str = None, timeout: float = None) -> dict:
    """One real ``swift sft`` run of ``variant`` (full fine-tuning) for ``steps`` steps; returns ``s_per_step``
    (seconds, mean of steps 2..steps from ms-swift's per-step ``train_speed(s/it)``), ``memory_gib`` (ms-swift's
    logged peak reserved accelerator memory, GiB; None on CPU, where it logs none) and ``wall_s`` of the process.
    ``dtype``: ``float32`` or ``bfloat16`` (weights and mixed precision); ``deepspeed``: ``zero2``/``zero3`` (one
    process through torchrun) or None. Raises SystemExit with the end of the log when the run fails."""
    loss_type, lean = VARIANTS[variant]
    bf16 = "true" if dtype == "bfloat16" else "false"
    args = ["--model", model_dir, "--model_type", "qwen3_vl_coord", "--template", "qwen3_vl_coord",
            "--external_plugins", str(PLUGIN), "--dataset", f"coord:{data}", "--tuner_type", "full",
            "--torch_dtype", dtype, "--fp16", "false", "--bf16", bf16, "--check_model", "false",
            "--max_steps", str(steps), "--per_device_train_batch_size", str(batch_size),
            "--gradient_accumulation_steps", "1", "--learning_rate", "1e-5", "--output_dir", str(out),
            "--add_version", "false", "--save_strategy", "no", "--logging_steps", "1", "--dataloader_num_workers", "0",
            "--report_to", "none", "--seed", "42", "--data_seed", "42", "--max_pixels", str(max_pixels),
            "--dataset_num_proc", "1", "--loss_type", loss_type]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MAX_PIXELS=str(max_pixels))
    env.pop("COORDEXP_LEAN", None)
    if lean:
        env["COORDEXP_LEAN"] = "1"
    if deepspeed:
        args += ["--deepspeed", deepspeed]
        env.setdefault("NPROC_PER_NODE", "1")
        env.setdefault("MASTER_PORT", "29617")
    t0 = time.perf_counter()
    proc = subprocess.run([SWIFT, "sft", *args], env=env, cwd=str(out.parent), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "swift-sft.log").write_text(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stdout[-4000:]}")
    logs = [json.loads(line) for line in open(out / "logging.jsonl") if '"train_speed(s/it)"' in line]
    logs = [r for r in logs if "loss" in r]
    elapsed = [r["train_speed(s/it)"] * int(r["global_step/max_steps"].split("/")[0]) for r in logs]
    memory = [r["memory(GiB)"] for r in logs if "memory(GiB)" in r]
    return {"s_per_step": (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1), "memory_gib": max(memory) if memory else None,
            "wall_s": wall, "loss": logs[-1]["loss"], "steps": len(logs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-pixels", type=int, default=65536)
    p.add_argument("--data", default=str(REPO / "assets" / "coco_sample" / "samples.jsonl"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = p.parse_args()
    if a.steps < 2:  # the step time is the difference between the first and the last logged step
        p.error(f"--steps must be at least 2, got {a.steps}")
    from swift_coord_plugin.tiny_model import build_tiny_model

    tmp = Path(tempfile.mkdtemp())
    model_dir = build_tiny_model(str(tmp / "tiny"))
    data = tmp / "samples.jsonl"
    absolute_samples(Path(a.data), data)
    times = {v: [] for v in a.variants}
    for rnd in range(a.rounds):
        for v in a.variants:
            out = tmp / f"{v.replace(' ', '_')}_{rnd}"
            times[v].append(run(v, model_dir, str(data), out, a))
            print(f"  round {rnd + 1} {v}: {times[v][-1]:.3f} s/step", flush=True)
    ref = statistics.median(times["stock"]) if "stock" in times else None
    print(f"\n# swift sft step time ({time.strftime('%Y-%m-%d')})")
    print(f"machine: {torch_machine()}")
    print(f"command: python bench/bench_sft_step.py --steps {a.steps} --rounds {a.rounds} --batch-size {a.batch_size}")
    print(f"tiny Qwen3-VL (hidden 64, vocabulary 152,704, tied head), full fine-tuning, float32, batch {a.batch_size}, "
          f"steps 2..{a.steps} of each run, median over {a.rounds} runs\n")
    print("| loss | s/step | x stock |")
    print("|---|---|---|")
    for v in a.variants:
        t = statistics.median(times[v])
        name = "stock `cross_entropy`" if v == "stock" else v
        print(f"| {name} | {t:.3f} | {t / ref:.2f} |" if ref else f"| {name} | {t:.3f} | - |")


if __name__ == "__main__":
    main()
