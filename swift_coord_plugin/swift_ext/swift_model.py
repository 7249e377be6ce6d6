"""The ms-swift loader of the model type ``qwen3_vl_coord`` and its registration (imports ms-swift; imported only
by ``register.register``, which ms-swift's plugin import calls).

Public: ``CoordQwen3VLLoader``, ``register``. Design notes: ``docs/design/swift_ext_model.md``.
"""
from __future__ import annotations


from swift.model import MODEL_MAPPING, ModelArch, ModelMeta, get_lm_head_model, register_model
from swift.model.models.qwen import Qwen3VLLoader, Qwen3VLMoeLoader

from .. import environment
from ..core.codec import new_tokens
from ..core.moe import MOE_ARCHITECTURE, is_moe_checkpoint
from ..core.vocab import CoordVocab
from .model import MODEL_TYPE, TEMPLATE_TYPE, add_coord_input_noise, head_is_tied, init_new_rows, keep_router_logits


class CoordQwen3VLLoader(Qwen3VLMoeLoader):
    """ms-swift's Qwen3-VL loader for dense checkpoints and its Qwen3-VL-MoE loader for mixture-of-experts ones
    (chosen per checkpoint, see ``is_moe_checkpoint``), plus the coordinate vocabulary.

    It derives from ``Qwen3VLMoeLoader`` (itself a ``Qwen3VLLoader``) so that both ``get_model``s can run
    on it; ``is_moe`` (read by ``Qwen3VLLoader.get_model`` for the mixed-data forward's output class) is
    set per checkpoint."""

    def get_model(self, model_dir, config, processor, model_kwargs):
        self.is_moe = is_moe_checkpoint(config)
        architectures = list(getattr(config, "architectures", None) or [])
        if self.is_moe and architectures and architectures[0] != MOE_ARCHITECTURE:
            print(f"[swift-coord] {model_dir}: config model_type {config.model_type} with architectures "
                  f"{architectures}: loading {MOE_ARCHITECTURE} (saved checkpoints will name it)", flush=True)
        if self.is_moe:
            model = Qwen3VLMoeLoader.get_model(self, model_dir, config, processor, model_kwargs)
            keep_router_logits(model.model)
        else:
            model = Qwen3VLLoader.get_model(self, model_dir, config, processor, model_kwargs)
        add_coord_input_noise(model, self._get_tokenizer(processor))
        return model

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
            seed, noise = environment.init_rows_settings()
            lm_model = get_lm_head_model(model, self.model_meta)
            emb = lm_model.get_input_embeddings().weight
            rows = getattr(emb, "ds_shape", emb.shape)[0]  # ds_shape: the full shape under ZeRO-3
            # The new tokens and the padding rows after them (no token maps there, but their logits
            # are part of every softmax), so that the whole matrix is deterministic under the seed.
            digest = init_new_rows(lm_model, before, max(rows, len(tokenizer)), seed, noise)
            print(f"[swift-coord] added {added} tokens (ids {before}..{len(tokenizer) - 1}; "
                  f"<|coord_0|>={vocab.coord_start}, <obj_start>={vocab.obj_start}, <obj_end>={vocab.obj_end}); "
                  f"embedding rows {rows}; LM head {'tied' if head_is_tied(lm_model) else 'untied'}; new rows "
                  f"initialised to the vocabulary mean + {noise} std noise (seed {seed}, rows digest {digest})",
                  flush=True)


def register() -> None:
    """Register the model type ``qwen3_vl_coord`` with ``CoordQwen3VLLoader`` (a no-op when registered already)."""
    if MODEL_TYPE in MODEL_MAPPING:
        return
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
