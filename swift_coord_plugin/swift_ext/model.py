"""Model type ``qwen3_vl_coord``: stock Qwen3-VL loading plus the coordinate vocabulary.

Public: ``MODEL_TYPE``, ``TEMPLATE_TYPE``, ``head_is_tied``, ``rows_digest``, ``init_new_rows``,
``keep_router_logits``, ``add_coord_input_noise`` (the ms-swift loader, ``CoordQwen3VLLoader``, and its registration
are in ``swift_model``). Design notes: ``docs/design/swift_ext_model.md``.
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from typing import Optional, Sequence

import torch

from .. import environment
from ..core.moe import MOE_ARCHITECTURE, MOE_MODEL_TYPE, is_moe_checkpoint  # noqa: F401 (one definition, re-exported)
from ..core.vocab import CoordVocab
from ..core.input_noise import noise_settings, perturb_coord_inputs

MODEL_TYPE = "qwen3_vl_coord"
TEMPLATE_TYPE = "qwen3_vl_coord"


def _gathered(params, modify: bool = True):
    """Context that gathers ZeRO-3 partitioned parameters, for in-place edits by rank 0 (broadcast on exit) or,
    with ``modify=False``, for reading (no-op without ZeRO-3)."""
    if not any(hasattr(p, "ds_id") for p in params):  # not managed by DeepSpeed ZeRO-3
        return nullcontext()
    import deepspeed  # only under ZeRO-3 (importing DeepSpeed takes seconds)

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
    max_shift, prob = noise_settings(environment.current())
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
