"""GPU acceptance run: on one GPU, in a few minutes, the numbers a first run on a GPU node needs, each stage through the
project's own benchmark code, each stage's rows written as soon as it finishes.

Stages (``--device cuda``: one H100/H200 with the machine's own torch and transformers; ``--device cpu``: the same
code on tiny sizes, which is what the test runs):

1. **loss**: the loss stage from the hidden states (``bench_loss.worker``: hidden states and head -> loss ->
   backward) for ms-swift's stock ``cross_entropy``, groups A, B, C and the lean A, B, C, in bfloat16, at 4,096
   and 16,384 tokens, hidden 2048 (CPU: 128 and 512 tokens, hidden 64, float32); time and peak memory over the inputs, both also as ratios
   to stock. One process per variant (so one variant's memory does not colour the next; on CPU one for all), both
   token counts in it, smallest first.
2. **sft**: ``swift sft`` steps of a randomly initialised Qwen3-VL-2B-shaped model (``bench_decode.
   build_shaped_model``: its language model and vision tower at their real sizes, the real vocabulary), full
   fine-tuning, DeepSpeed ZeRO-2, bfloat16, one run per group (``bench_sft_step.run_sft``): seconds per step and
   ms-swift's logged peak reserved memory (CPU: the tiny model, float32, which is the CPU recipe's precision).
3. **decode**: free and grammar-constrained greedy decoding of that model on the transformers backend
   (``bench_decode.run_mode``); the grammar's share of a decode step is ``1 - free / constrained`` per-step time
   (per step = (wall - prefill) / the batch's decode steps). The processor's own timer is shown too: on a GPU it
   also counts the wait for the model's queued kernels (its first read of the token ids synchronises), so there
   only the difference is the grammar's cost.
4. **vllm**: ``bench/bench_decode.py --backend vllm`` on that model when ``import vllm`` works in this python;
   otherwise the row "vLLM: not installed".

Every stage appends its table to ``OUT/results_gpu.md`` and its rows to ``OUT/rows.jsonl`` when it ends (a run cut
short keeps what finished), and, with ``--record FILE``, to ``FILE`` too (``bench/gpu_acceptance.sh`` records into
``bench/results_gpu.md``). A failing stage writes a row saying so and the run goes on; the exit status is 1 then.

    bash bench/gpu_acceptance.sh                              # on the GPU machine (see that script)
    python bench/gpu_acceptance.py --device cpu --out /tmp/acc   # every stage, tiny sizes
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (also when imported as a module)
from machine import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STAGES = ("loss", "sft", "decode", "vllm")
LOSS_VARIANTS = ("stock", "A", "B", "C", "lean A", "lean B", "lean C")
SFT_GROUPS = {"stock": "stock", "A": "A", "B": "B", "C": "C"}  # bench_sft_step.VARIANTS names


@dataclass
class Sizes:
    """What each stage runs on one device kind."""
    device: str
    loss_tokens: Tuple[int, ...]
    loss_hidden: int
    loss_dtype: str
    loss_repeat: int
    model: str  # "qwen3-vl-2b" (bench_decode.SHAPES, with its vision tower) or "tiny"
    model_dtype: str
    sft_steps: int
    sft_batch: int
    sft_max_pixels: int
    decode_batch: int
    decode_max_new_tokens: int
    loss_warmup: int = 1
    loss_process_per_variant: bool = True
    loss_vocab: int = 152704  # the plugin's vocabulary: Qwen3-VL's 151,669 + 1,002, padded to 64 by the bench
    sft_groups: Tuple[str, ...] = ("A", "B", "C")
    deepspeed: str = "zero2"


SIZES = {
    "cuda": Sizes(device="cuda", loss_tokens=(4096, 16384), loss_hidden=2048, loss_dtype="bfloat16", loss_repeat=3,
                  model="qwen3-vl-2b", model_dtype="bfloat16", sft_steps=6, sft_batch=4, sft_max_pixels=409600,
                  decode_batch=4, decode_max_new_tokens=64),
    # CPU: float32 (bfloat16 matmuls have no fast CPU kernel on most machines), small enough for a test
    "cpu": Sizes(device="cpu", loss_tokens=(128, 512), loss_hidden=64, loss_dtype="float32", loss_repeat=1,
                 loss_warmup=0, loss_process_per_variant=False, model="tiny", model_dtype="float32", sft_steps=2, sft_batch=1, sft_max_pixels=65536,
                 decode_batch=2, decode_max_new_tokens=16),
}


# ---------------------------------------------------------------------------------------------- the report
@dataclass
class Report:
    """The run's markdown section and JSON rows, written to ``out`` (and ``record``) stage by stage."""
    out: Path
    record: Optional[Path] = None
    failed: List[str] = field(default_factory=list)

    def _append(self, text: str) -> None:
        for path in (self.out / "results_gpu.md", self.record):
            if path is not None:
                with open(path, "a") as f:
                    f.write(text)

    def header(self, title: str, lines: List[str]) -> None:
        self._append(f"\n## {title}\n\n" + "".join(f"- {line}\n" for line in lines))

    def stage(self, name: str, title: str, columns: List[str], rows: List[dict], seconds: float,
              notes: str = "") -> None:
        """Append one stage: a table of ``rows`` (dicts keyed by ``columns``) and one JSON line per row."""
        lines = [f"\n### {title} ({seconds:.0f} s)\n", "", "| " + " | ".join(columns) + " |",
                 "|" + "---|" * len(columns)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
        self._append("\n".join(lines) + "\n" + (f"\n{notes}\n" if notes else ""))
        with open(self.out / "rows.jsonl", "a") as f:
            for r in rows:
                f.write(json.dumps({"stage": name, **r}) + "\n")
        print(f"[acceptance] {name}: {len(rows)} rows in {seconds:.0f} s", flush=True)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def versions() -> dict:
    """Versions of what the run uses, read from the installed distributions (no heavy imports)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "ms-swift", "deepspeed", "accelerate", "vllm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine_line(device: str) -> str:
    import torch

    cpu = f"{cpu_name()}, {os.cpu_count()} CPUs"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2 ** 30:.0f} GiB), CUDA {torch.version.cuda}; {cpu}"
    return cpu


# ---------------------------------------------------------------------------------------------- stage 1: loss
def loss_worker(a) -> None:
    """Each ``--variant`` at every ``--tokens`` count, smallest first, in this process (``bench_loss.worker``);
    prints one JSON object ``{variant: {tokens: result}}``."""
    import bench_loss

    results = {}
    for variant in a.variant:
        os.environ.pop("COORDEXP_LEAN", None)  # bench_loss.worker sets it for a lean variant
        results[variant] = {}
        for tokens in sorted(a.tokens):
            ns = argparse.Namespace(variant=variant, stage="hidden", tokens=tokens, rows=max(1, tokens // 1024),
                                    vocab=a.vocab, hidden=a.hidden, dtype=a.dtype, device=a.device,
                                    repeat=a.repeat, warmup=a.warmup, seed=0, prompt_frac=0.25)
            results[variant][tokens] = bench_loss.worker(ns)
    print(json.dumps(results))


def stage_loss(sz: Sizes, variants=LOSS_VARIANTS) -> Tuple[List[dict], str]:
    gib = 2 ** 30
    raw = {}
    # one process per variant (its memory does not colour the next); on CPU, where these sizes measure no memory
    # worth the name, all in one (a process start costs more than the tiny steps)
    batches = [[v] for v in variants] if sz.loss_process_per_variant else [list(variants)]
    for batch in batches:
        cmd = [sys.executable, __file__, "--loss-worker", "--variant", *batch, "--device", sz.device,
               "--tokens", *map(str, sz.loss_tokens), "--hidden", str(sz.loss_hidden), "--vocab", str(sz.loss_vocab),
               "--dtype", sz.loss_dtype, "--repeat", str(sz.loss_repeat), "--warmup", str(sz.loss_warmup)]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", HF_HUB_OFFLINE="1")  # as bench_loss.run_variant
        env.pop("COORDEXP_LEAN", None)
        proc = subprocess.run(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"loss worker {', '.join(batch)} failed:\n{proc.stderr[-3000:]}")
        for v, res in json.loads(proc.stdout.strip().splitlines()[-1]).items():
            raw[v] = {int(k): r for k, r in res.items()}
    rows = []
    for tokens in sz.loss_tokens:
        ref = raw["stock"][tokens] if "stock" in raw else None
        ref_t = statistics.median(ref["times"]) if ref else None
        for v in variants:
            r = raw[v][tokens]
            t = statistics.median(r["times"])
            rows.append({"tokens": tokens, "variant": "stock cross_entropy" if v == "stock" else v,
                         "ms": t * 1e3, "time x stock": t / ref_t if ref else None, "peak GiB": r["peak"] / gib,
                         "memory x stock": r["peak"] / ref["peak"] if ref and ref["peak"] > 0 else None,
                         "loss": r["loss"]})
    memory = ("`torch.cuda.max_memory_allocated` minus what was allocated before the step" if sz.device == "cuda"
              else "peak RSS minus the RSS with the inputs, not comparable here: every variant runs in one process, "
                   "whose peak RSS only grows")
    notes = (f"Hidden {sz.loss_hidden}, vocabulary {sz.loss_vocab}, {sz.loss_dtype}; rows of 1,024 tokens (25% "
             f"prompt, then objects); median of {sz.loss_repeat} timed steps after {sz.loss_warmup} warm-up; peak memory: {memory}.")
    return rows, notes


# ---------------------------------------------------------------------------------------------- stage 2: sft
def build_model(sz: Sizes, work: Path) -> str:
    """The model of the sft and decode stages, built once."""
    if sz.model == "tiny":
        from swift_coord_plugin.tiny_model import build_tiny_model

        return build_tiny_model(str(work / "tiny"))
    import torch

    from bench_decode import build_shaped_model

    out = build_shaped_model(str(work / sz.model), sz.model, vision=True, dtype=sz.model_dtype, device=sz.device)
    if sz.device == "cuda":
        torch.cuda.empty_cache()  # the sft runs are other processes
    return out


def parameter_count(model_dir: str) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                size = 1
                for d in shape:
                    size *= d
                n += size
    return n


def stage_sft(sz: Sizes, model_dir: str, work: Path) -> Tuple[List[dict], str]:
    from bench_sft_step import absolute_samples, run_sft

    data = work / "samples.jsonl"
    absolute_samples(REPO / "assets" / "coco_sample" / "samples.jsonl", data)
    rows = []
    for g in sz.sft_groups:
        r = run_sft(SFT_GROUPS[g], model_dir, str(data), work / f"sft_{g}", sz.sft_steps, sz.sft_batch,
                    sz.sft_max_pixels, dtype=sz.model_dtype, deepspeed=sz.deepspeed)
        rows.append({"group": g, "s/step": r["s_per_step"], "memory GiB": r["memory_gib"], "last loss": r["loss"],
                     "steps": r["steps"], "wall s": r["wall_s"]})
    notes = (f"`swift sft` per group: {sz.model} model ({parameter_count(model_dir) / 1e9:.2f}B parameters, random "
             f"weights, real vocabulary), full fine-tuning, DeepSpeed {sz.deepspeed} on one process, "
             f"{sz.model_dtype}, batch {sz.sft_batch} of the shipped COCO sample at max_pixels {sz.sft_max_pixels}, "
             f"{sz.sft_steps} steps; s/step = mean of steps 2..{sz.sft_steps} (ms-swift's train_speed); memory = "
             f"ms-swift's logged `memory(GiB)` (peak reserved; none on CPU); wall = the whole process.")
    return rows, notes


# ---------------------------------------------------------------------------------------------- stage 3: decode
def stage_decode(sz: Sizes, model_dir: str) -> Tuple[List[dict], str]:
    import torch

    from bench_decode import make_engine, requests, run_mode
    from swift_coord_plugin.swift_ext.register import register

    os.environ.setdefault("MAX_PIXELS", "65536")
    register()
    engine = make_engine("transformers", model_dir, sz.decode_batch, dtype=sz.model_dtype)
    reqs = requests(str(REPO / "assets" / "coco_sample" / "samples.jsonl"), sz.decode_batch)
    runs = {m: run_mode(engine, reqs, m, sz.decode_max_new_tokens, False, 1) for m in ("free", "constrained")}
    del engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # a per-step time needs decode steps to divide by: a random model may end its (constrained) answer at once,
    # and then there is none to measure (the cells stay empty)
    per_step = {m: (r["wall_s"] - r["prefill_s"]) / r["steps"] if r["steps"] >= 4 and r["wall_s"] > r["prefill_s"]
                else None for m, r in runs.items()}
    rows = []
    for m, r in runs.items():
        share = None
        if m != "free" and per_step[m] and per_step["free"]:
            share = 1 - per_step["free"] / per_step[m]
        rows.append({"decoding": m, "tokens": r["tokens"], "decode steps": r["steps"], "wall s": r["wall_s"],
                     "prefill s": r["prefill_s"], "ms per decode step": per_step[m] * 1e3 if per_step[m] else None,
                     "tokens/s": r["tokens_per_s"], "grammar share of a decode step": share,
                     "processor timer share": r["step_share"] if m != "free" and per_step[m] else None})
    notes = (f"Transformers backend, {sz.model} model in {sz.model_dtype}, {sz.decode_batch} images in one batch, "
             f"greedy, max_new_tokens {sz.decode_max_new_tokens}, one timed pass after a warm-up. The grammar's "
             f"share = 1 - free / constrained ms per decode step; the processor timer share is its own clock over "
             f"the decode time (on a GPU it includes the wait for the model's queued kernels).")
    return rows, notes


# ---------------------------------------------------------------------------------------------- stage 4: vllm
def vllm_importable() -> Tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", "import vllm; print(vllm.__version__)"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode == 0:
        return True, proc.stdout.strip()
    return False, (proc.stderr.strip().splitlines() or ["?"])[-1]


def stage_vllm(sz: Sizes, model_dir: Optional[str]) -> Tuple[List[dict], str]:
    ok, info = vllm_importable()
    if not ok:
        return [{"backend": "vLLM: not installed", "result": f"`import vllm` fails: {info}"}], ""
    if model_dir is None:
        raise RuntimeError("no model: the model build failed")
    cmd = [sys.executable, str(REPO / "bench" / "bench_decode.py"), "--backend", "vllm", "--model", model_dir,
           "--modes", "free", "constrained", "--n", str(sz.decode_batch), "--batch", str(sz.decode_batch),
           "--max-new-tokens", str(sz.decode_max_new_tokens), "--repeat", "1", "--dtype", sz.model_dtype]
    proc = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM {info}: bench_decode failed:\n{proc.stdout[-3000:]}")
    table = [line for line in proc.stdout.splitlines() if line.startswith("| vllm |")]
    return [{"backend": f"vLLM {info}", "result": line} for line in table], f"`{shlex.join(cmd[1:])}`"


# ---------------------------------------------------------------------------------------------- driver
COLUMNS = {
    "loss": ["tokens", "variant", "ms", "time x stock", "peak GiB", "memory x stock", "loss"],
    "sft": ["group", "s/step", "memory GiB", "last loss", "steps", "wall s"],
    "decode": ["decoding", "tokens", "decode steps", "wall s", "prefill s", "ms per decode step", "tokens/s",
               "grammar share of a decode step", "processor timer share"],
    "vllm": ["backend", "result"],
}
TITLES = {"loss": "Loss stage from the hidden states, forward + backward", "sft": "`swift sft` steps per group",
          "decode": "Constrained decoding, transformers backend", "vllm": "vLLM"}


def run(sz: Sizes, report: Report, stages=STAGES, work: Optional[Path] = None) -> None:
    """Run ``stages`` in order, each one's rows written by ``report`` when it ends; a failing stage writes a row
    "FAILED: ..." (and is listed in ``report.failed``), the next one still runs."""
    work = work or Path(tempfile.mkdtemp(prefix="acceptance-"))
    model_dir = None
    for name in stages:
        t0 = time.perf_counter()
        try:
            if name in ("sft", "decode", "vllm") and model_dir is None:
                t1 = time.perf_counter()
                model_dir = build_model(sz, work)
                print(f"[acceptance] model {sz.model} built in {time.perf_counter() - t1:.0f} s: {model_dir}",
                      flush=True)
            if name == "loss":
                rows, notes = stage_loss(sz)
            elif name == "sft":
                rows, notes = stage_sft(sz, model_dir, work)
            elif name == "decode":
                rows, notes = stage_decode(sz, model_dir)
            else:
                rows, notes = stage_vllm(sz, model_dir)
        except BaseException as e:  # noqa: BLE001 — also SystemExit from the bench helpers; the next stage runs
            if isinstance(e, KeyboardInterrupt):
                raise
            traceback.print_exc()
            report.failed.append(name)
            first = COLUMNS[name][0]
            rows, notes = [{first: f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}], ""
        report.stage(name, TITLES[name], COLUMNS[name], rows, time.perf_counter() - t0, notes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=sorted(SIZES), default=None, help="default: cuda when one is visible")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for results_gpu.md and rows.jsonl "
                   "(default $OUT)")
    p.add_argument("--record", default=None, help="also append the section to this file (bench/results_gpu.md)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--sft-groups", nargs="+", default=None, choices=sorted(SFT_GROUPS),
                   help="default A B C (stock: ms-swift's cross_entropy, for a ratio)")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)  # the wrapper's command line, for the record
    p.add_argument("--loss-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.loss_worker:
        loss_worker(a)
        return 0
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU visible to torch")
    if not a.out:
        p.error("--out (or $OUT) is required")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sz = SIZES[device]
    if a.sft_groups:
        sz.sft_groups = tuple(a.sft_groups)
    report = Report(out, Path(a.record) if a.record else None)
    v = versions()
    command = a.command or shlex.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
    report.header(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {device.upper()}: {machine_line(device)}", [
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"command: `{command}`",
        f"sizes: {json.dumps(asdict(sz))}",
    ])
    (out / "sizes.json").write_text(json.dumps({"device": device, "versions": v, "sizes": asdict(sz)}, indent=1))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="acceptance-") as work:  # the model, the sft runs' folders
        run(sz, report, a.stages, Path(work))
    total = time.perf_counter() - t0
    report._append(f"\nAll stages: {total:.0f} s" + (f"; FAILED: {', '.join(report.failed)}" if report.failed else "")
                   + "\n")
    print(f"[acceptance] done in {total:.0f} s; results in {out / 'results_gpu.md'}", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
