"""Model type ``qwen3_vl_coord``: stock Qwen3-VL loading plus the coordinate vocabulary.

``--model_type qwen3_vl_coord`` loads any Qwen3-VL checkpoint exactly as ``qwen3_vl`` does, then:

1. adds the plugin's 1002 tokens (``<|coord_0|>``..``<|coord_999|>``, ``<obj_start>``, ``<obj_end>``) in id
   order, unless ``--new_special_tokens`` already names them; ms-swift resizes the embedding and the LM
   head to a multiple of 128 rows (152,704 for Qwen3-VL), which keeps the head matmul aligned;
2. re-initialises the rows of every token added in this load, and the padding rows after them, uniformly
   (see ``init_new_rows``).

Why not ms-swift's default initialisation: Qwen3-VL has 151,936 rows for a 151,669-token tokenizer, so
the first 267 new tokens would land in existing, untrained padding rows while the other 735 get freshly
sampled rows (mean + covariance noise from the global RNG). Coordinate bins 0..266 would then start from
a different distribution than bins 267..999, a systematic bias across bins that the expectation
(CoordExp) loss sees directly. Instead every new row (and every padding row after the new tokens: no
token maps to them, but their logits enter every softmax) starts at the mean of the pre-existing vocabulary
rows plus small Gaussian noise from a dedicated generator seeded by ``COORD_INIT_SEED`` (default 0), with
standard deviation ``COORD_INIT_NOISE`` (default 0.01) times the per-dimension std of those rows. The
result is identical for every bin in distribution, and bit-identical across runs with the same seed.

A checkpoint that already holds the tokens (``swift infer`` / ``swift export`` / resuming) adds nothing and
re-initialises nothing.
"""
from __future__ import annotations

import os

import torch

from ..core.codec import new_tokens
from ..core.vocab import CoordVocab

MODEL_TYPE = "qwen3_vl_coord"
TEMPLATE_TYPE = "qwen3_vl_coord"


def _gathered(params):
    """Context that gathers ZeRO-3 partitioned parameters for in-place edits (no-op otherwise)."""
    from contextlib import nullcontext

    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return nullcontext()
    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


@torch.no_grad()
def init_new_rows(model, first_new_id: int, last_new_id: int, seed: int = 0, noise: float = 0.01) -> None:
    """Set rows ``first_new_id .. last_new_id - 1`` of the input embedding (and of an untied LM head)
    to the mean of rows ``0 .. first_new_id - 1`` plus seeded noise (see the module docstring)."""
    emb = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    head = head_module.weight if head_module is not None else None
    tied = head is None or head is emb or head.data_ptr() == emb.data_ptr()
    targets = [emb] if tied else [emb, head]
    with _gathered(targets):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for w in targets:
            ref = w[:first_new_id].float()
            mean, std = ref.mean(0), ref.std(0)
            n = last_new_id - first_new_id
            eps = torch.randn(n, w.shape[1], generator=gen, dtype=torch.float32)
            rows = mean.cpu() + noise * std.cpu() * eps
            w[first_new_id:last_new_id] = rows.to(device=w.device, dtype=w.dtype)


def register() -> None:
    from swift.model import MODEL_MAPPING, ModelMeta, register_model
    from swift.model import ModelArch
    from swift.model.models.qwen import Qwen3VLLoader

    if MODEL_TYPE in MODEL_MAPPING:
        return

    class CoordQwen3VLLoader(Qwen3VLLoader):

        def _add_new_special_tokens(self, model, processor, config):
            tokenizer = self._get_tokenizer(processor)
            wanted = new_tokens()
            given = list(self.new_special_tokens or [])
            # Keep user tokens, then ours in id order (contiguity of the coordinate ids).
            self.new_special_tokens = given + [t for t in wanted if t not in set(given)]
            before = len(tokenizer)
            super()._add_new_special_tokens(model, processor, config)
            vocab = CoordVocab.from_tokenizer(tokenizer)  # raises if ids are not contiguous
            added = len(tokenizer) - before
            if added and model is not None and not self.return_dummy_model:
                seed = int(os.environ.get("COORD_INIT_SEED", "0"))
                noise = float(os.environ.get("COORD_INIT_NOISE", "0.01"))
                from swift.model import get_lm_head_model

                emb = model.get_input_embeddings().weight
                rows = getattr(emb, "ds_shape", emb.shape)[0]  # ds_shape: the full shape under ZeRO-3
                # The new tokens and the padding rows after them (no token maps there, but their logits
                # are part of every softmax), so that the whole matrix is deterministic under the seed.
                init_new_rows(get_lm_head_model(model, self.model_meta), before, max(rows, len(tokenizer)),
                              seed, noise)
                print(f"[swift-coord] added {added} tokens (ids {before}..{len(tokenizer) - 1}; "
                      f"<|coord_0|>={vocab.coord_start}, <obj_start>={vocab.obj_start}, <obj_end>={vocab.obj_end}); "
                      f"embedding rows {rows}; new rows initialised to the vocabulary mean + {noise} std noise "
                      f"(seed {seed})", flush=True)

    register_model(
        ModelMeta(
            MODEL_TYPE,
            [],
            CoordQwen3VLLoader,
            template=TEMPLATE_TYPE,
            model_arch=ModelArch.qwen3_vl,
            architectures=[],  # never auto-detected: chosen explicitly with --model_type
            is_multimodal=True,
            requires=["transformers>=4.57", "qwen_vl_utils>=0.0.14"],
            tags=["vision"],
        ),
        exist_ok=True,
    )
