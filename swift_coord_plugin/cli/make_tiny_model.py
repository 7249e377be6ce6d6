"""coord-make-tiny-model OUT: build the tiny random Qwen3-VL (dense, or MoE with --moe) with the real tokenizer."""
# ``tiny_model`` is imported after the arguments are parsed: it loads torch and the transformers model classes
# (several seconds), which ``--help`` and a usage error do not need.
from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="coord-make-tiny-model", description=__doc__)
    p.add_argument("out", help="output directory")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vision-depth", type=int, default=2)
    p.add_argument("--untied", action="store_true", help="separate LM head (default: tied to the embedding)")
    p.add_argument("--moe", action="store_true",
                   help="mixture-of-experts text model (Qwen3VLMoeForConditionalGeneration, like Qwen3-VL-30B-A3B)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head-dim", type=int, default=None,
                   help="attention head size (default hidden/4); vLLM on CPU needs 64 (it rejects 16)")
    a = p.parse_args(argv)
    from swift_coord_plugin.tiny_model import build_tiny_model

    t0 = time.time()
    build_tiny_model(a.out, hidden=a.hidden, layers=a.layers, vision_depth=a.vision_depth,
                     tie_word_embeddings=not a.untied, seed=a.seed, moe=a.moe,
                     head_dim=a.head_dim)
    print(f"[coord-make-tiny-model] wrote {a.out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
