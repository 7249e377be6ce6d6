"""Decoding throughput, free vs grammar-constrained, through ms-swift's inference engine.

For each decoding mode the same rows (the shipped COCO sample's 9 images by default) are generated
greedily in batches; the table gives tokens/s and images/s, and the share of decode time spent in the
grammar (the logits processor's own time, measured inside it, over the wall time of the engine call).
The model should write long answers so that the comparison covers the grammar in every phase: pass a
trained checkpoint (e.g. the demo's group A, ``output/demo/group_a/checkpoint-100``); without ``--model``
a tiny random model is built (its constrained answers are short).

    python bench/bench_decode.py [--model CKPT] [--backend transformers] [--modes free constrained coordexp]
                                 [--max-new-tokens 200] [--batch 9] [--repeat 3] [--logprobs]
    python bench/bench_decode.py --grammar-only --threads 1      # the grammar step alone, no model
    .venv-vllm/bin/python bench/bench_decode.py --backend vllm --model CKPT --modes constrained --vllm-variant noop
                                 # vLLM's cost of a processor that changes nothing (also: raw-logprobs)
    python bench/bench_decode.py --shape qwen3-vl-2b --n 2 --batch 2 --max-new-tokens 48 --repeat 1
                                 # a randomly initialised model with Qwen3-VL-2B's language-model dimensions

The grammar's cost per step barely depends on the model (it works on the ``[batch, vocab]`` logits), the
model's cost does: on the tiny model (hidden 64, 2 layers) a step is little more than its LM head, so the
share there is an upper bound. ``--shape qwen3-vl-2b`` measures the share at a real model's size (weights
random: what is timed does not depend on them; the grammar forces answers of the real form). The column
"share of the decode steps" subtracts the prefill (a ``max_tokens=1`` pass over the same rows, timed alone).

``--backend`` selects the engine (``make_engine``); a backend adds a branch there and nothing else.
``--backend vllm`` runs with the vLLM environment's python (``.venv-vllm/bin/python``) on a model vLLM's CPU
attention accepts (head_dim 64: ``coord-make-tiny-model --head-dim 64``); vLLM installs the grammar when an
engine is built, so each mode gets its own engine (built before its warm-up, outside the timing).
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
MAX_PIXELS = "65536"


def make_engine(backend: str, model: str, batch: int, dtype: str = "float32"):
    """The ms-swift inference engine of ``backend`` on ``model`` (plugin registered; ``dtype`` a torch dtype name,
    float32 on CPU)."""
    import torch

    if backend == "transformers":
        from swift.infer_engine import TransformersEngine

        return TransformersEngine(model, max_batch_size=batch, torch_dtype=getattr(torch, dtype),
                                  model_type="qwen3_vl_coord", template_type="qwen3_vl_coord")
    if backend == "vllm":  # run with the vLLM environment's python (.venv-vllm)
        from swift.infer_engine import VllmEngine

        # The engine process is this one (VLLM_ENABLE_V1_MULTIPROCESSING=0, set in main), so the grammar's
        # time lands in decoding.STATS here. The grammar is per engine: one engine per mode.
        return VllmEngine(model, torch_dtype=getattr(torch, dtype), model_type="qwen3_vl_coord",
                          template_type="qwen3_vl_coord", max_model_len=4096, max_num_seqs=batch,
                          enforce_eager=True)
    raise SystemExit(f"--backend {backend}: not available in this script yet")


# The language model of Qwen3-VL-2B-Instruct (its config.json ``text_config``): hidden 2048, 28 layers, 16 query
# and 8 key/value heads of 128, MLP 6144, tied head. The vision tower stays tiny (it runs in the prefill only).
SHAPES = {"qwen3-vl-2b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=128)}
# Its vision tower (``vision_config``): 24 blocks of hidden 1024 (MLP 4096, 16 heads), 48x48 position embeddings,
# deep-stack features from blocks 5, 11 and 17.
VISION_SHAPES = {"qwen3-vl-2b": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                                     num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])}


def build_shaped_model(out_dir: str, shape: str, vision: bool = False, dtype: str = "float32",
                       device: str = "cpu") -> str:
    """A randomly initialised Qwen3-VL with the language-model dimensions of ``shape`` (``SHAPES``) and, with
    ``vision``, its vision tower's too (``VISION_SHAPES``; otherwise the tiny one), with the tiny model's
    processor and tokenizer (the real vocabulary), written to ``out_dir`` in ``dtype`` (a torch dtype name).
    ``device``: where the weights are initialised (``cuda`` is much faster for billions of parameters)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from swift_coord_plugin.tiny_model import build_tiny_model

    build_tiny_model(out_dir)  # processor, tokenizer, generation config
    config = Qwen3VLConfig.from_pretrained(out_dir)
    dims = SHAPES[shape]
    for k, v in dims.items():
        setattr(config.text_config, k, v)
    half = dims["head_dim"] // 2  # mrope sections (t, h, w) sum to head_dim // 2, as Qwen3-VL's [24, 20, 20]
    config.text_config.rope_parameters["mrope_section"] = [half - 2 * (half * 5 // 16), half * 5 // 16,
                                                           half * 5 // 16]
    if vision:
        for k, v in VISION_SHAPES[shape].items():
            setattr(config.vision_config, k, v)
    config.vision_config.out_hidden_size = dims["hidden_size"]
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(getattr(torch, dtype)).eval()
    for f in os.listdir(out_dir):
        if f.endswith(".safetensors") or f == "model.safetensors.index.json":
            os.remove(os.path.join(out_dir, f))
    model.save_pretrained(out_dir)
    del model
    return out_dir


def requests(samples_path: str, n: int):
    from swift.infer_engine import InferRequest

    from swift_coord_plugin.core.codec import DEFAULT_PROMPT

    rows = [json.loads(line) for line in open(samples_path) if line.strip()][:n]
    base = os.path.dirname(samples_path)
    return [InferRequest(messages=[{"role": "user", "content": "<image>" + DEFAULT_PROMPT}],
                         images=[r["image"] if os.path.isabs(r["image"]) else os.path.join(base, r["image"])])
            for r in rows]


def run_mode(engine, reqs, mode: str, max_new_tokens: int, logprobs: bool, repeat: int) -> dict:
    from swift.infer_engine import RequestConfig

    from swift_coord_plugin.swift_ext import decoding

    os.environ[decoding.ENV_MODE] = mode
    cfg = RequestConfig(max_tokens=max_new_tokens, temperature=0, logprobs=logprobs,
                        top_logprobs=20 if logprobs else None)
    engine.infer(reqs[:1], cfg, use_tqdm=False)  # warm-up
    # The prefill alone (one new token) over the same rows: subtracted for the share of the decode steps.
    one = RequestConfig(max_tokens=1, temperature=0, logprobs=logprobs, top_logprobs=20 if logprobs else None)
    t0 = time.perf_counter()
    engine.infer(reqs, one, use_tqdm=False)
    prefill = time.perf_counter() - t0
    best = None
    for _ in range(repeat):
        decoding.reset_stats()
        t0 = time.perf_counter()
        resp = engine.infer(reqs, cfg, use_tqdm=False)
        wall = time.perf_counter() - t0
        tokens = sum(r.usage.completion_tokens for r in resp)
        # decode steps of the batch: its longest answer (batches of at most ``max_batch_size`` rows)
        run = {"wall_s": wall, "tokens": tokens, "steps": max(r.usage.completion_tokens for r in resp),
               "grammar_s": decoding.STATS["seconds"],
               "grammar_steps": decoding.STATS["steps"]}
        if best is None or wall < best["wall_s"]:
            best = run
    best.update(mode=mode, tokens_per_s=best["tokens"] / best["wall_s"], images_per_s=len(reqs) / best["wall_s"],
                grammar_share=best["grammar_s"] / best["wall_s"], prefill_s=prefill,
                step_share=best["grammar_s"] / max(best["wall_s"] - prefill, 1e-9))
    return best


def patch_vllm_processor(variant: str) -> None:
    """For ``--vllm-variant``: change the plugin's vLLM processor in this process (the engine runs in it)."""
    from swift_coord_plugin.swift_ext import vllm_decoding

    if variant == "noop":
        vllm_decoding.GrammarProcessorV1.apply = lambda self, logits: logits  # the CPU runner's processor
    elif variant == "raw-logprobs":
        shipped = vllm_decoding.engine_kwargs

        def engine_kwargs(config=None):
            kwargs = shipped(config)
            kwargs.pop("logprobs_mode", None)
            return kwargs

        vllm_decoding.engine_kwargs = engine_kwargs


def _former_step(g, x, states, record: bool, remaining: int):
    """The grammar step as first written (kept here for the before/after): one full boolean mask per row
    stacked to ``[B, V]``, a ``[B, V]`` select, and a ``[B, V]`` log-softmax for the recorded distribution;
    coordexp's decision then rewrites its rows."""
    import torch

    from swift_coord_plugin.core.coordexp import decide_bins
    from swift_coord_plugin.core.grammar import COORDEXP

    v = g.vocab
    mask = torch.stack([g.allowed_mask(s, x.shape[1], x.device, remaining) for s in states])
    processed = torch.where(mask, x, torch.full((), float("-inf"), dtype=x.dtype))
    rows = torch.tensor([g.is_coord_slot(s) for s in states]).nonzero().flatten()
    lp = torch.log_softmax(processed.float(), dim=-1) if record else None
    if g.mode == COORDEXP and rows.numel():
        ids = decide_bins(processed[rows, v.coord_start:v.coord_end]) + v.coord_start
        processed.index_fill_(0, rows, float("-inf"))
        processed[rows, ids] = 0.0
    return processed, lp


def grammar_only(batch: int, vocab: int = 152704, n: int = 40) -> None:
    """Time one grammar step per state kind as the transformers backend calls it (in place on its float32
    copy of the logits; with logprobs on, the masked logits are kept for ms-swift to log-softmax), next to
    the former implementation and to transformers' own per-step logits work. Median of ``n`` calls, each
    on a fresh copy of the same logits (the copy is not timed)."""
    import statistics

    import torch

    from swift_coord_plugin.core import grammar as G

    gv = G.GrammarVocab(coord_start=151669, obj_start=152669, obj_end=152670, sep=220, post=(220,),
                        end_ids=(151643, 151645), desc_ids=tuple(range(150000)), vocab_size=152671)
    x0 = torch.randn(batch, vocab)

    def ms(fn) -> float:
        times = []
        for _ in range(n + 1):
            x = x0.clone()
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:]) * 1000

    print("| decoding | state | logprobs recorded | ms per step (now) | ms per step (former) |")
    print("|---|---|---|---|---|")
    for mode in (G.CONSTRAINED, G.COORDEXP):
        g = G.AnswerGrammar(gv, mode)
        start = g.initial_state()
        desc = g.advance(g.advance(start, gv.obj_start), 5)
        coord = g.advance(desc, gv.sep)
        for name, st in (("start", start), ("description", desc), ("coordinate", coord)):
            for rec in (False, True):
                now = ms(lambda x: G.apply_grammar(g, x, [st] * batch, with_logprobs=False, remaining=100,
                                                   inplace=True, with_masked_logits=rec))
                former = ms(lambda x: _former_step(g, x, [st] * batch, rec, 100))
                print(f"| {mode} | {name} | {'yes' if rec else 'no'} | {now:.2f} | {former:.2f} |")
    print(f"| (transformers' own: float32 copy + argmax) | | | {ms(lambda x: x.to(copy=True).argmax(-1)):.2f} | |")
    w, h = torch.randn(vocab, 64), torch.randn(batch, 64)
    print(f"| (tiny model's LM head, hidden 64) | | | {ms(lambda x: h @ w.T):.2f} | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: a tiny random Qwen3-VL, built here)")
    p.add_argument("--shape", default=None, choices=sorted(SHAPES),
                   help="instead of --model: a random model with these language-model dimensions, built here")
    p.add_argument("--backend", default="transformers", choices=("transformers", "vllm"))
    p.add_argument("--modes", nargs="+", default=["free", "constrained", "coordexp"])
    p.add_argument("--samples", default=str(REPO / "assets" / "coco_sample" / "samples.jsonl"))
    p.add_argument("--n", type=int, default=9, help="rows (images)")
    p.add_argument("--batch", type=int, default=9)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3, help="passes per mode; the fastest is reported")
    p.add_argument("--logprobs", action="store_true", help="also record log-probabilities (top 20)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--dtype", default="float32", help="the engine's torch dtype (bfloat16 on a GPU)")
    p.add_argument("--vllm-variant", default=None, choices=("noop", "raw-logprobs"),
                   help="vLLM only, a diagnosis of the time outside the grammar: 'noop' installs the processor but "
                        "returns the logits untouched; 'raw-logprobs' keeps vLLM's default logprobs_mode")
    p.add_argument("--grammar-only", action="store_true",
                   help="time core.grammar.apply_grammar alone ([batch, 152704] logits), no model")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MAX_PIXELS", MAX_PIXELS)
    if a.backend == "vllm":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.grammar_only:
        print(f"command: python bench/bench_decode.py {' '.join(sys.argv[1:])}")
        print(f"machine: {torch_machine()}, torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f}; batch {a.batch}")
        grammar_only(a.batch)
        return
    from swift_coord_plugin.swift_ext.register import register

    register()
    if a.vllm_variant:
        if a.backend != "vllm":
            raise SystemExit("--vllm-variant needs --backend vllm")
        patch_vllm_processor(a.vllm_variant)
    model = a.model
    if model is None and a.shape:
        model = build_shaped_model(os.path.join(tempfile.mkdtemp(), a.shape), a.shape)
    elif model is None:
        from swift_coord_plugin.tiny_model import build_tiny_model

        model = build_tiny_model(os.path.join(tempfile.mkdtemp(), "tiny"), head_dim=64 if a.backend == "vllm" else None)
    engine = make_engine(a.backend, model, a.batch, a.dtype) if a.backend != "vllm" else None
    reqs = requests(a.samples, a.n)
    print(f"command: python bench/bench_decode.py {' '.join(sys.argv[1:])}")
    print(f"machine: {torch_machine()}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"model: {model}; backend {a.backend}; {len(reqs)} images, batch {a.batch}, "
          f"max_new_tokens {a.max_new_tokens}, greedy, logprobs {'top 20' if a.logprobs else 'off'}; "
          f"best of {a.repeat}")
    rows = []
    for m in a.modes:
        if a.backend == "vllm":  # the logits processor is installed when the engine is built
            from swift_coord_plugin.swift_ext import decoding

            os.environ[decoding.ENV_MODE] = m
            engine = make_engine(a.backend, model, a.batch, a.dtype)
        rows.append(run_mode(engine, reqs, m, a.max_new_tokens, a.logprobs, a.repeat))
        if a.backend == "vllm":
            engine.engine.shutdown() if hasattr(engine.engine, "shutdown") else None
            del engine
    free = next((r for r in rows if r["mode"] == "free"), None)
    print()
    print("| backend | decoding | tokens | wall s | tokens/s | images/s | grammar s | grammar share of decode time |"
          " prefill s | share of the decode steps |" + (" tokens/s vs free |" if free else ""))
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if free else ""))
    for r in rows:
        line = (f"| {a.backend} | {r['mode']} | {r['tokens']} | {r['wall_s']:.2f} | {r['tokens_per_s']:.1f} | "
                f"{r['images_per_s']:.2f} | {r['grammar_s']:.3f} | {100 * r['grammar_share']:.1f}% | "
                f"{r['prefill_s']:.2f} | {100 * r['step_share']:.1f}% |")
        if free:
            line += f" {r['tokens_per_s'] / free['tokens_per_s']:.3f} |"
        print(line)


if __name__ == "__main__":
    main()
