"""Cost of the evaluation inference: result-file bytes per image and per generated token, time per image.

Runs stock ``swift infer`` with ``templates/infer_eval.yaml`` (the configured ``top_logprobs``) on a
checkpoint and a unified-sample file, as ``shell/eval.sh`` does, and reads the result file and ms-swift's
own metric line (``runtime``, ``num_generated_tokens``). Prints the machine, the command and a table.
Without ``--checkpoint`` it builds the tiny random Qwen3-VL and runs it with the plugin's model type and
template (an untrained model writes until ``--max-new-tokens``: the figures per generated token are what
carries over to a real model).

    python bench/bench_infer_cost.py [--checkpoint DIR] [--val samples.jsonl] [--max-new-tokens 128]
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main(argv=None) -> int:
    from machine import torch_machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a trained checkpoint (default: a fresh tiny random Qwen3-VL)")
    p.add_argument("--val", default=None, help="unified samples (default: the shipped COCO sample, 9 images)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-pixels", type=int, default=65536)
    p.add_argument("--backend", default="transformers")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="infer_cost_"))
    val = args.val
    if val is None:
        rows = [json.loads(line) for line in open(REPO / "assets" / "coco_sample" / "samples.jsonl")]
        for r in rows:
            r["image"] = str((REPO / "assets" / "coco_sample" / r["image"]).resolve())
        val = str(work / "val.jsonl")
        Path(val).write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = []
    ckpt = args.checkpoint
    if ckpt is None:
        from swift_coord_plugin.entry import PLUGIN_FILE
        from swift_coord_plugin.tiny_model import build_tiny_model

        ckpt = build_tiny_model(str(work / "tiny"))
        extra = ["--model_type", "qwen3_vl_coord", "--template", "qwen3_vl_coord", "--external_plugins", PLUGIN_FILE]
    result = work / "infer_result.jsonl"
    swift = str(Path(sys.executable).parent / "swift")
    cmd = [swift, "infer", str(REPO / "templates" / "infer_eval.yaml"), "--model", ckpt, *extra,
           "--val_dataset", f"coord:{os.path.abspath(val)}", "--result_path", str(result),
           "--max_new_tokens", str(args.max_new_tokens), "--max_pixels", str(args.max_pixels),
           "--infer_backend", args.backend]
    import yaml

    cfg = yaml.safe_load(open(REPO / "templates" / "infer_eval.yaml"))
    print(f"machine: {torch_machine()}")
    print(f"top_logprobs {cfg.get('top_logprobs')}, backend {args.backend}, max_new_tokens {args.max_new_tokens}")
    print("command: " + " ".join(shlex.quote(c) for c in cmd))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("NPROC_PER_NODE", None)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        return 1
    metric = None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(?:\[rank\d+\] )?(\{'num_prompt_tokens'.*\})$", line.strip())
        if m:
            metric = ast.literal_eval(m.group(1))
    rows = [json.loads(line) for line in open(result)]
    size = result.stat().st_size
    tokens = sum(len((r.get("logprobs") or {}).get("content") or []) for r in rows)
    n = len(rows)
    print(f"\n| images | generated tokens | result bytes | bytes/image | bytes/token | generation s (ms-swift runtime) "
          f"| s/image | s/token | wall s (incl. start-up) |\n|---|---|---|---|---|---|---|---|---|")
    runtime = metric["runtime"] if metric else float("nan")
    print(f"| {n} | {tokens} | {size} | {size / n:.0f} | {size / max(tokens, 1):.0f} | {runtime:.1f} | "
          f"{runtime / n:.2f} | {runtime / max(tokens, 1):.4f} | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
