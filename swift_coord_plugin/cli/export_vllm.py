"""coord-export-vllm CKPT OUT: write a copy of a checkpoint that vLLM loads (mixture-of-experts Qwen3-VL saved by
transformers 5: fused expert weights in the published layout, text_config.norm_topk_prob). The copy loads in
transformers with identical weights. A dense checkpoint is copied unchanged (vLLM loads it as it is)."""
from __future__ import annotations

import argparse
import sys

from ..vllm_export import ExportError, export_for_vllm, summary, vllm_export_needed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="coord-export-vllm", description=__doc__)
    p.add_argument("ckpt", help="checkpoint folder (fully fine-tuned or merged; not a LoRA adapter)")
    p.add_argument("out", nargs="?", help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty output folder")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 0 when vLLM can load CKPT as it is, 1 (saying why) when it needs the copy")
    a = p.parse_args(argv)
    if a.check:
        try:
            why = vllm_export_needed(a.ckpt)
        except ExportError as e:
            sys.exit(f"[coord-export-vllm] error: {e}")
        if why:
            print(f"[coord-export-vllm] {a.ckpt} needs a copy for vLLM ({why}): coord-export-vllm {a.ckpt} OUT")
            sys.exit(1)
        return
    if not a.out:
        p.error("OUT is required (unless --check)")
    try:
        report = export_for_vllm(a.ckpt, a.out, overwrite=a.overwrite)
    except ExportError as e:
        sys.exit(f"[coord-export-vllm] error: {e}")
    print(f"[coord-export-vllm] {a.out}: {summary(report)}")


if __name__ == "__main__":
    main()
