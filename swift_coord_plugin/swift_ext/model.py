"""Model type ``qwen3_vl_coord``: stock Qwen3-VL loading plus the coordinate vocabulary.

Public: ``MODEL_TYPE``, ``TEMPLATE_TYPE``, ``head_is_tied``, ``rows_digest``, ``init_new_rows``,
``keep_router_logits``, ``add_coord_input_noise``, ``register``. Design notes: ``docs/design/swift_ext_model.md``.
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional, Sequence

import torch

from ..core.codec import new_tokens
from ..core.moe import MOE_ARCHITECTURE, MOE_MODEL_TYPE, is_moe_checkpoint  # noqa: F401 (one definition, re-exported)
from ..core.vocab import CoordVocab
from ..core.input_noise import noise_settings, perturb_coord_inputs

MODEL_TYPE = "qwen3_vl_coord"
TEMPLATE_TYPE = "qwen3_vl_coord"


def _gathered(params, modify: bool = True):
    """Context that gathers ZeRO-3 partitioned parameters, for in-place edits by rank 0 (broadcast on exit) or,
    with ``modify=False``, for reading (no-op without ZeRO-3)."""
    from contextlib import nullcontext

    if not any(hasattr(p, "ds_id") for p in params):  # not managed by DeepSpeed ZeRO-3
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


def head_is_tied(model) -> bool:
    """Whether the LM head uses the input embedding's weight: the two are the same ``nn.Parameter`` object
    (transformers ties by assigning the embedding's parameter to the head), or there is no head.

    Identity survives partitioning; ``data_ptr()`` does not (DeepSpeed ZeRO-3 leaves every partitioned
    parameter an empty tensor with ``data_ptr() == 0``). The config's ``tie_word_embeddings`` is not used
    alone because transformers leaves a head untied when a checkpoint holds both matrices with different
    values, whatever the config says; a disagreement is reported by ``init_new_rows``."""
    emb = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    return head_module is None or head_module.weight is emb


def _declared_tied(model) -> Optional[bool]:
    """The config's ``tie_word_embeddings`` (top level; the text config's when the top level has none)."""
    config = getattr(model, "config", None)
    value = getattr(config, "tie_word_embeddings", None)
    if value is None and hasattr(config, "get_text_config"):
        value = getattr(config.get_text_config(), "tie_word_embeddings", None)
    return value


def rows_digest(weights: Sequence[torch.Tensor], first: int, last: int) -> str:
    """First 16 hex digits of the SHA-256 of rows ``first .. last - 1`` of each matrix, as float32 bytes: a
    short fingerprint to compare the initial rows of runs (plain, DDP ranks, ZeRO-2/3). Needs full (gathered)
    matrices."""
    h = hashlib.sha256()
    for w in weights:
        h.update(w[first:last].detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def init_new_rows(model, first_new_id: int, last_new_id: int, seed: int = 0, noise: float = 0.01) -> str:
    """Set rows ``first_new_id .. last_new_id - 1`` of the input embedding (and of the LM head when it is not
    tied, see ``head_is_tied``) to the mean of rows ``0 .. first_new_id - 1`` plus ``noise`` times their
    per-dimension std times standard Gaussian noise from a CPU generator seeded by ``seed`` (see the module
    docstring). Works on ZeRO-3 partitioned parameters (gathered for the edit, rank 0's values broadcast).

    Returns ``rows_digest`` of the initialised rows (embedding, then head when untied)."""
    tied = head_is_tied(model)
    declared = _declared_tied(model)
    if declared is not None and bool(declared) != tied:
        print(f"[swift-coord] note: the config says tie_word_embeddings={declared} but the LM head is "
              f"{'the embedding parameter' if tied else 'a separate parameter'}; initialising "
              f"{'one matrix' if tied else 'both matrices'} (what the forward uses)", flush=True)
    emb = model.get_input_embeddings().weight
    targets = [emb] if tied else [emb, model.get_output_embeddings().weight]
    with _gathered(targets):
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for w in targets:
            ref = w[:first_new_id].float()
            mean, std = ref.mean(0), ref.std(0)
            n = last_new_id - first_new_id
            eps = torch.randn(n, w.shape[1], generator=gen, dtype=torch.float32)
            rows = mean.cpu() + noise * std.cpu() * eps
            w[first_new_id:last_new_id] = rows.to(device=w.device, dtype=w.dtype)
    with _gathered(targets, modify=False):  # read back what every rank now holds
        return rows_digest(targets, first_new_id, last_new_id)


def keep_router_logits(inner) -> None:
    """Give the MoE router logits back to ``inner`` (a ``Qwen3VLMoeModel``) under DeepSpeed.

    ms-swift's DeepSpeed forward of Qwen3-VL (``_compat_qwen3_vl_mixed_data``, installed as ``inner.forward``
    with the original kept as ``inner.origin_forward``) runs the language model and then rebuilds the output
    from ``last_hidden_state``, ``past_key_values`` and ``rope_deltas`` only. ``router_logits`` is lost, so
    with ``--router_aux_loss_coef`` the top model's load-balancing loss becomes the integer 0 and the step
    crashes (``'int' object has no attribute 'to'``) or the loss is silently absent. This wraps the language
    model's forward to keep its ``router_logits`` and puts them on the rebuilt output when it has none.
    Idempotent; a no-op for a model without ms-swift's wrapper or without a language model."""
    lm = getattr(inner, "language_model", None)
    if lm is None or not hasattr(inner, "origin_forward") or getattr(inner, "_coord_router_logits", False):
        return
    captured = {}
    lm_forward = lm.forward
    swift_forward = inner.forward

    def language_model_forward(*args, **kwargs):
        out = lm_forward(*args, **kwargs)
        captured["router_logits"] = getattr(out, "router_logits", None)
        return out

    def forward(*args, **kwargs):
        captured.clear()
        out = swift_forward(*args, **kwargs)
        if getattr(out, "router_logits", None) is None and captured.get("router_logits") is not None:
            out["router_logits"] = captured["router_logits"]
        return out

    lm.forward = language_model_forward
    inner.forward = forward
    inner._coord_router_logits = True


def add_coord_input_noise(model, tokenizer) -> None:
    """With ``COORD_INPUT_NOISE_BINS`` > 0: in training mode, the model's forward receives ``input_ids`` whose
    coordinate tokens were moved by ``core.input_noise.perturb_coord_inputs`` (the labels are untouched, so every
    loss targets the true bins). Wraps ``model.forward`` (the module DeepSpeed, PEFT and the trainer call);
    evaluation and inference (``model.training`` False) see the ids unchanged."""
    max_shift, prob = noise_settings(os.environ)
    if max_shift == 0 or getattr(model, "_coord_input_noise", False):
        return
    base_forward = model.forward
    coord_start = []

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if model.training and ids is not None:
            if not coord_start:  # the tokens are added after the model is built
                coord_start.append(CoordVocab.from_tokenizer(tokenizer).coord_start)
            kwargs["input_ids"] = perturb_coord_inputs(ids, coord_start[0], max_shift, prob)
        return base_forward(*args, **kwargs)

    model.forward = forward
    model._coord_input_noise = True
    print(f"[swift-coord] coordinate input noise: in training, each input coordinate token moved by up to "
          f"{max_shift} bins with probability {prob} (labels unchanged)", flush=True)


def register() -> None:
    from swift.model import MODEL_MAPPING, ModelArch, ModelMeta, register_model
    from swift.model.models.qwen import Qwen3VLLoader, Qwen3VLMoeLoader

    if MODEL_TYPE in MODEL_MAPPING:
        return

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
                seed = int(os.environ.get("COORD_INIT_SEED", "0"))
                noise = float(os.environ.get("COORD_INIT_NOISE", "0.01"))
                from swift.model import get_lm_head_model

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
