"""Why a group's boxes fail under free-running decoding while its teacher-forced boxes are good: two checks.

1. Unseen bins (no model needed): the share of the coordinate tokens a result file emitted whose bin never
   occurs in the training targets. A model that has memorised a small training set (the demo: 9 images, 149
   distinct bins) stays on sequences it has seen as long as it emits seen bins; a CoordExp decision
   ``round(E[k])`` usually lands between them.
2. Sensitivity to the previous coordinate (``--ckpt``): for the first object of each training sample, the
   teacher-forced CoordExp expectation of ``x2`` (softmax restricted to the 1000 coordinate logits, in bins)
   with the ground-truth ``y1`` token before it, and with that token moved by ``--shift`` bins. A model that
   reads its coordinates off the image moves ``E[x2]`` by a few bins at most; one that keys on the exact
   previous token moves it by hundreds.

    python bench/diagnose_self_feeding.py --train output/demo/data/train.jsonl \
        --results output/demo/group_b/eval/checkpoint-100/infer_result.jsonl [more result files]
    python bench/diagnose_self_feeding.py --train output/demo/data/train.jsonl \
        --ckpt output/demo/group_b/checkpoint-100 [--shift 2] [--n 9]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

from machine import torch_machine  # bench/machine.py (the script's folder is on sys.path)

COORD_RE = re.compile(r"<\|coord_(\d+)\|>")


def _rows(path: str):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def seen_bins(train_path: str) -> set:
    """Bins (0..999) of every box coordinate of the training targets (the codec's rule)."""
    from swift_coord_plugin.core.codec import quantize_box

    return {k for r in _rows(train_path) for o in r["objects"] for k in quantize_box(o["bbox"])}


def unseen_share(result_path: str, seen: set):
    """(coordinate tokens emitted, share of them whose bin is not in ``seen``)."""
    bins = [int(k) for r in _rows(result_path) for k in COORD_RE.findall(r.get("response") or "")]
    return len(bins), (sum(k not in seen for k in bins) / len(bins) if bins else float("nan"))


def sensitivity(ckpt: str, train_path: str, shift: int, n: int):
    """Per sample: (E[x2] after the true y1, E[x2] after y1 + shift), in bins, teacher-forced."""
    import torch
    from swift.infer_engine import InferRequest, TransformersEngine

    from swift_coord_plugin.core.codec import DEFAULT_PROMPT, coord_token, quantize_box, render_object
    from swift_coord_plugin.swift_ext.register import register

    register()
    engine = TransformersEngine(ckpt, max_batch_size=1, torch_dtype=torch.float32, model_type="qwen3_vl_coord",
                                template_type="qwen3_vl_coord")
    template = engine.template
    template.set_mode("train")
    tokenizer = template.tokenizer
    coord_ids = torch.tensor(tokenizer.convert_tokens_to_ids([coord_token(k) for k in range(1000)]))
    coord_set = set(coord_ids.tolist())
    base = os.path.dirname(os.path.abspath(train_path))

    def expected_x2(image: str, desc: str, bins) -> float:
        req = InferRequest(messages=[{"role": "user", "content": "<image>" + DEFAULT_PROMPT},
                                     {"role": "assistant", "content": render_object(desc, bins)}], images=[image])
        batch = template.data_collator([template.encode(req)])
        batch.pop("labels", None)
        with torch.no_grad():
            logits = engine.model(**batch).logits[0]
        ids = batch["input_ids"][0]
        pos = [i for i, t in enumerate(ids.tolist()) if t in coord_set]
        p = logits[pos[2] - 1, coord_ids].float().softmax(-1)  # the position that predicts x2
        return float((p * torch.arange(1000)).sum())

    out = []
    for r in _rows(train_path)[:n]:
        image = r["image"] if os.path.isabs(r["image"]) else os.path.join(base, r["image"])
        o = r["objects"][0]
        bins = list(quantize_box(o["bbox"]))
        moved = list(bins)
        moved[1] = bins[1] + shift if bins[1] + shift <= 999 else bins[1] - shift
        out.append((bins[2], expected_x2(image, o["desc"], bins), expected_x2(image, o["desc"], moved)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="the training samples (unified JSONL)")
    p.add_argument("--results", nargs="*", default=[], help="swift infer result files")
    p.add_argument("--ckpt", default=None, help="checkpoint for the sensitivity check")
    p.add_argument("--shift", type=int, default=2, help="bins added to the ground-truth y1 token")
    p.add_argument("--n", type=int, default=9, help="training samples for the sensitivity check")
    a = p.parse_args()
    print(f"command: python bench/diagnose_self_feeding.py {' '.join(sys.argv[1:])}")
    print(f"machine: {torch_machine()}")
    seen = seen_bins(a.train)
    print(f"distinct bins in the training targets: {len(seen)} of 1000")
    if a.results:
        print("\n| result file | coordinate tokens | bins never in the training targets |\n|---|---|---|")
        for path in a.results:
            n, share = unseen_share(path, seen)
            print(f"| {path} | {n} | {100 * share:.0f}% |")
    if a.ckpt:
        rows = sensitivity(a.ckpt, a.train, a.shift, a.n)
        print(f"\n{a.ckpt}: teacher-forced E[x2] (bins) of each sample's first object, after the true y1 token and "
              f"after y1 moved by {a.shift} bins\n")
        print("| sample | true x2 | E[x2], true y1 | E[x2], y1 moved | moved by |\n|---|---|---|---|---|")
        for i, (x2, e, e_moved) in enumerate(rows):
            print(f"| {i} | {x2} | {e:.1f} | {e_moved:.1f} | {abs(e_moved - e):.1f} |")
        print(f"\nmedian move: {statistics.median(abs(m - e) for _, e, m in rows):.1f} bins")


if __name__ == "__main__":
    main()
