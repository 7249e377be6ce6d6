"""Loss-stage benchmark: ms-swift's stock ``cross_entropy`` vs groups A, B, C (standard path) and the lean path.

Forward + backward, same inputs for every variant, each variant in a fresh process (so that one variant's
memory does not colour the next), the variants interleaved over ``--rounds`` rounds. Two tables:

* **on the same logits**: a ``[tokens, vocab]`` logits leaf -> loss -> backward. Stock = ``loss_map['cross_entropy']``,
  A/B/C = ``loss_map['coordexp_ce' | 'coordexp_geom' | 'coordexp_hybrid']`` (the registered ms-swift losses).
* **from the hidden states** (the whole loss stage): hidden ``[tokens, hidden]`` and head weight ``[vocab, hidden]``
  leaves -> logits ``h @ W.T`` -> loss -> backward for stock and A/B/C; the lean A/B/C (``COORDEXP_LEAN=1``) get the
  hidden states and the head module, as the template hands them over, and never build the logits.

Peak memory is over the inputs: CUDA ``max_memory_allocated`` minus what was allocated before the step; CPU the
process's peak resident set (``ru_maxrss``) minus its resident set once the inputs exist, with glibc told to hand
every freed block over 1 MiB back to the system (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the RSS.
Labels: rows of ``--prompt-frac`` ignored positions, then objects (``<obj_start>``, 2 description tokens, 4
coordinate tokens, ``<obj_end>``) and an end-of-turn token.

    python bench/bench_loss.py                       # CPU: 2048 tokens, vocab 152704, hidden 2048, float32
    python bench/bench_loss.py --device cuda         # GPU: 16384 tokens, hidden 2048 and 4096, bfloat16
    python bench/bench_loss.py --stages logits --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from machine import cpu_name  # bench/machine.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
STOCK = "stock"
STANDARD = ("A", "B", "C")
LEAN = ("lean A", "lean B", "lean C")
# Qwen3-VL ids with the plugin's 1002 tokens: <|coord_0|> .. <|coord_999|>, <obj_start>, <obj_end>.
COORD_START, OBJ_START, OBJ_END, IM_END = 151669, 152669, 152670, 151645


# ---------------------------------------------------------------------------------------------- worker
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _labels(tokens: int, rows: int, prompt_frac: float, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    T = tokens // rows
    labels = torch.full((rows, T), -100, dtype=torch.long)
    for b in range(rows):
        t = int(T * prompt_frac)
        while t + 9 <= T - 1:
            bins = torch.randint(0, 1000, (4,), generator=g)
            obj = [OBJ_START, 1000 + b, 2000 + t % 97] + [COORD_START + int(k) for k in bins] + [OBJ_END]
            labels[b, t:t + 8] = torch.tensor(obj)
            t += 8
        labels[b, t] = IM_END
    return labels


def worker(a) -> dict:
    import torch
    from types import SimpleNamespace

    if a.variant.startswith("lean"):
        os.environ["COORDEXP_LEAN"] = "1"
    from swift.loss import loss_map

    from swift_coord_plugin.core.losses import LOSS_TYPES
    from swift_coord_plugin.core.vocab import CoordVocab
    from swift_coord_plugin.swift_ext import lean as lean_glue
    from swift_coord_plugin.swift_ext import loss as coord_loss

    coord_loss.register()
    dev = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    cuda = dev.type == "cuda"
    vocab = CoordVocab(coord_start=COORD_START, obj_start=OBJ_START, obj_end=OBJ_END)
    labels = _labels(a.tokens, a.rows, a.prompt_frac, a.seed).to(dev)
    B, T = labels.shape
    g = torch.Generator(device=dev).manual_seed(a.seed)
    if a.stage == "logits":
        inputs = [torch.randn(B, T, a.vocab, generator=g, device=dev, dtype=dtype).requires_grad_(True)]
    else:
        h = (torch.randn(B, T, a.hidden, generator=g, device=dev, dtype=dtype)).requires_grad_(True)
        head = torch.nn.Linear(a.hidden, a.vocab, bias=False, device=dev, dtype=dtype)
        with torch.no_grad():
            head.weight.normal_(0.0, a.hidden ** -0.5, generator=g)
        inputs = [h, head.weight]
    if a.variant == STOCK:
        fn = loss_map["cross_entropy"](None, None)
    else:
        fn = loss_map[LOSS_TYPES[a.variant[-1]]](None, None)
        fn.vocab = vocab
        assert fn.config.lean == a.variant.startswith("lean")

    def step():
        if a.stage == "logits":
            outputs = SimpleNamespace(logits=inputs[0])
        elif a.variant.startswith("lean"):
            lean = lean_glue.LeanInputs(hidden=h, linear=head, mm_dtype=None)
            outputs = SimpleNamespace(logits=None, coord_lean=lean)
        else:
            outputs = SimpleNamespace(logits=h @ head.weight.t())
        loss = fn(outputs, labels, num_items_in_batch=None)
        loss.backward()
        value = loss.item()
        for x in inputs:
            x.grad = None
        return value

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(a.repeat):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        value = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    layout_targets = labels[:, 1:]
    n_coord = int(((layout_targets >= COORD_START) & (layout_targets < COORD_START + 1000)).sum())
    return {"times": times, "peak": peak, "loss": value, "labelled": int((layout_targets != -100).sum()),
            "coord": n_coord}


# ---------------------------------------------------------------------------------------------- driver
def machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = cpu_name()
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def run_variant(a, stage: str, variant: str, hidden: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--stage", stage, "--variant", variant, "--hidden", str(hidden),
           "--tokens", str(a.tokens), "--rows", str(a.rows), "--vocab", str(a.vocab), "--dtype", a.dtype,
           "--device", a.device, "--repeat", str(a.repeat), "--warmup", str(a.warmup), "--seed", str(a.seed),
           "--prompt-frac", str(a.prompt_frac)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", HF_HUB_OFFLINE="1")
    env.pop("COORDEXP_LEAN", None)
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{stage}/{variant} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(title: str, variants, results) -> str:
    gib = 1024 ** 3
    stock_t = statistics.median(results[STOCK]["times"])
    stock_m = statistics.median(results[STOCK]["peaks"])
    lines = [f"### {title}", "",
             "| variant | time ms (median) | x stock | peak memory over inputs GiB | x stock | loss |",
             "|---|---|---|---|---|---|"]
    for v in variants:
        r = results[v]
        t, m = statistics.median(r["times"]), statistics.median(r["peaks"])
        name = "stock `cross_entropy`" if v == STOCK else v
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / stock_t:.3f} | {m / gib:.3f} | {m / stock_m:.3f} | "
                     f"{r['loss']:.6f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=int, default=None, help="kept positions (default 2048 on CPU, 16384 on CUDA)")
    p.add_argument("--rows", type=int, default=None, help="sequences (default tokens // 1024)")
    p.add_argument("--vocab", type=int, default=152704)
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="default 2048 on CPU, 2048 4096 on CUDA")
    p.add_argument("--dtype", default=None, help="default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--stages", nargs="+", default=["logits", "hidden"], choices=["logits", "hidden"])
    p.add_argument("--rounds", type=int, default=None, help="fresh processes per variant (default 3 CPU, 2 CUDA)")
    p.add_argument("--repeat", type=int, default=None, help="timed steps per process (default 2 CPU, 5 CUDA)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-frac", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", default="logits", help=argparse.SUPPRESS)
    p.add_argument("--variant", default=STOCK, help=argparse.SUPPRESS)
    a = p.parse_args()
    cuda = a.device == "cuda"
    if a.worker:
        a.hidden = a.hidden[0]
        print(json.dumps(worker(a)))
        return
    a.tokens = a.tokens or (16384 if cuda else 2048)
    a.rows = a.rows or max(1, a.tokens // 1024)
    a.hidden = a.hidden or ([2048, 4096] if cuda else [2048])
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    a.rounds = a.rounds or (2 if cuda else 3)
    a.repeat = a.repeat or (5 if cuda else 2)

    print(f"machine: {machine(a.device)}")
    print(f"sizes: {a.tokens} tokens ({a.rows} x {a.tokens // a.rows}), vocab {a.vocab}, hidden {a.hidden}, "
          f"{a.dtype}; {a.rounds} rounds x {a.repeat} timed steps (after {a.warmup} warm-up) per variant")
    print(f"memory: {'torch.cuda.max_memory_allocated' if cuda else 'peak RSS (ru_maxrss) - RSS with the inputs'}")
    raw = {}
    out = []
    jobs = []
    if "logits" in a.stages:
        jobs.append(("logits", (STOCK,) + STANDARD, a.hidden[0], "on the same logits"))
    if "hidden" in a.stages:
        for hd in a.hidden:
            jobs.append(("hidden", (STOCK,) + STANDARD + LEAN, hd, f"loss stage from hidden states, hidden {hd}"))
    for stage, variants, hd, title in jobs:
        results = {v: {"times": [], "peaks": []} for v in variants}
        for rnd in range(a.rounds):
            for v in variants:
                r = run_variant(a, stage, v, hd)
                results[v]["times"] += r["times"]
                results[v]["peaks"].append(r["peak"])
                results[v]["loss"] = r["loss"]
                sizes = f"{r['labelled']} labelled targets, {r['coord']} coordinate targets"
                print(f"  [{stage} h={hd} round {rnd + 1}] {v}: {min(r['times']) * 1e3:.1f} ms, "
                      f"{r['peak'] / 2 ** 30:.3f} GiB", flush=True)
        txt = table(title, variants, results) + f"\n\n({sizes})"
        out.append(txt)
        raw[f"{stage}/{hd}"] = results
        print("\n" + txt + "\n", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine(a.device), "args": vars(a), "results": raw}, indent=1))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
