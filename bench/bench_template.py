"""Template encoding throughput: ``qwen3_vl_coord`` (1002 added tokens) vs ms-swift's stock ``qwen3_vl``.

Both encode the same converted COCO rows (image + the same target text); the stock template gets the
target as plain assistant text and a tokenizer without the added tokens, so its coordinates are ordinary
BPE pieces. Also times the tokenizer alone on the target texts, with and without the added tokens, which
isolates the cost of matching 1002 added tokens.

    python bench/bench_template.py [--ann PATH --images DIR] [--n 128] [--repeat 3]

Default data: ../shared/data/coco128 when present, else the shipped sample.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from machine import torch_machine  # bench/machine.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = REPO.parent / "shared" / "data" / "coco128"
    p.add_argument("--ann", default=str(shared / "annotations" / "instances_train2017.json") if shared.exists()
                   else str(REPO / "assets" / "coco_sample" / "instances.json"))
    p.add_argument("--images", default=str(shared / "images") if shared.exists()
                   else str(REPO / "assets" / "coco_sample" / "images"))
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-pixels", type=int, default=65536)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from swift.dataset import load_dataset
    from swift.model import get_model_processor
    from swift.template import get_template

    from swift_coord_plugin.core import codec
    from swift_coord_plugin.data.coco import ConvertOptions, prepare_coco
    from swift_coord_plugin.swift_ext.register import register
    from swift_coord_plugin.tiny_model import build_tiny_model

    register()
    tmp = tempfile.mkdtemp()
    model_dir = build_tiny_model(os.path.join(tmp, "tiny"))
    jsonl = os.path.join(tmp, "samples.jsonl")
    prepare_coco(a.ann, a.images, jsonl, ConvertOptions(max_objects=30))
    rows = [dict(r) for r in load_dataset([f"coord:{jsonl}#{a.n}"], load_from_cache_file=False)[0]]
    samples = [json.loads(l) for l in open(jsonl)][: len(rows)]

    _, proc_coord = get_model_processor(model_dir, model_type="qwen3_vl_coord", load_model=False,
                                        torch_dtype=torch.float32, download_model=False)
    _, proc_stock = get_model_processor(model_dir, model_type="qwen3_vl", load_model=False,
                                        torch_dtype=torch.float32, download_model=False)
    t_coord = get_template(proc_coord, template_type="qwen3_vl_coord", max_pixels=a.max_pixels)
    t_stock = get_template(proc_stock, template_type="qwen3_vl", max_pixels=a.max_pixels)
    for t in (t_coord, t_stock):
        t.set_mode("train")
    targets = [codec.render_objects(codec.order_objects(codec.DetObject(o["desc"], tuple(o["bbox"]))
                                                        for o in s["objects"])) for s in samples]
    stock_rows = [{"messages": [{"role": "user", "content": "<image>" + codec.DEFAULT_PROMPT},
                                {"role": "assistant", "content": tgt}], "images": r["images"]}
                  for r, tgt in zip(rows, targets)]

    def timed(fn, items):
        best = float("inf")
        out = None
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = [fn(x) for x in items]
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_c, enc_c = timed(lambda r: t_coord.encode(dict(r)), rows)
    t_s, enc_s = timed(lambda r: t_stock.encode(dict(r)), stock_rows)
    tok_c = proc_coord.tokenizer
    tok_s = proc_stock.tokenizer
    k_c, ids_c = timed(lambda s: tok_c.encode(s, add_special_tokens=False), targets)
    k_s, ids_s = timed(lambda s: tok_s.encode(s, add_special_tokens=False), targets)
    n_c = sum(len(x) for x in ids_c)
    n_s = sum(len(x) for x in ids_s)
    lab_c = sum(sum(1 for l in e["labels"] if l != -100) for e in enc_c)
    lab_s = sum(sum(1 for l in e["labels"] if l != -100) for e in enc_s)
    n = len(rows)
    print(f"# template encoding benchmark ({time.strftime('%Y-%m-%d')})")
    print(f"machine: {torch_machine()}")
    print(f"command: python bench/bench_template.py --ann {os.path.relpath(a.ann, REPO)} --n {a.n} --repeat {a.repeat} "
          f"--max-pixels {a.max_pixels}")
    print(f"samples: {n} (objects capped at 30), best of {a.repeat}")
    print()
    print("| what | qwen3_vl_coord | stock qwen3_vl | ratio coord/stock |")
    print("|---|---|---|---|")
    print(f"| template.encode, samples/s (image + text) | {n / t_c:.1f} | {n / t_s:.1f} | {t_c / t_s:.2f} |")
    print(f"| tokenizer on the targets, samples/s | {n / k_c:.0f} | {n / k_s:.0f} | {k_c / k_s:.2f} |")
    print(f"| target tokens (labels) per sample | {lab_c / n:.1f} | {lab_s / n:.1f} | {lab_c / lab_s:.2f} |")
    print(f"| target text tokens per sample (tokenizer) | {n_c / n:.1f} | {n_s / n:.1f} | {n_c / n_s:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
