"""The lean loss path in ms-swift (``COORDEXP_LEAN=1``): the loss from the final hidden states and the LM head
weight, never materialising ``[tokens, vocab]`` logits.

Public: ``SUPPORTED_ARCHITECTURES``, ``LeanPathError``, ``HOW_TO_LEAVE``, ``LeanInputs``, ``lean_requested``,
``unwrap_model``, ``effective_linear``, ``resolve_head``, ``lean_forward``, ``run_as_forward``, ``check_gathered``.
Design notes: ``docs/design/swift_ext_lean.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

# Architectures whose forward is ``logits = self.lm_head(hidden_states[:, slice_indices, :])`` and nothing
# else between the hidden states and the logits (no scaling, no soft-capping).
SUPPORTED_ARCHITECTURES = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")


class LeanPathError(ValueError):
    """The lean path cannot apply to this model or run; the message says why and what to do."""


HOW_TO_LEAVE = "run without COORDEXP_LEAN (the standard path computes the same loss from the logits)"


@dataclass
class LeanInputs:
    """What the template's forward leaves for the loss."""

    hidden: Tensor                      # [B, T, H] the head's input (trimmed like the labels)
    linear: nn.Linear                   # the module that holds the head weight actually used
    mm_dtype: Optional[torch.dtype]     # autocast dtype active during the forward, if any


def lean_requested(trainer) -> bool:
    """True when the trainer's loss is a coordexp loss with ``lean`` on."""
    cfg = getattr(getattr(trainer, "compute_loss_func", None), "config", None)
    return bool(getattr(cfg, "lean", False))


def unwrap_model(model) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / compile wrappers and a peft model."""
    model = extract_model_from_parallel(model)
    get_base = getattr(model, "get_base_model", None)  # peft.PeftModel
    if callable(get_base) and type(model).__name__.startswith("Peft"):
        model = get_base()
    return model


def effective_linear(head: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` whose weight the head's forward uses (peft's ``modules_to_save`` wrapper resolved)."""
    linear = head
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):  # peft ModulesToSaveWrapper
        active = list(getattr(head, "active_adapters", []) or [])
        if head.disable_adapters or not active or any(a not in head.modules_to_save for a in active):
            linear = head.original_module
        else:
            linear = head.modules_to_save[active[0]]
    if type(linear) is not nn.Linear:
        raise LeanPathError(f"the LM head is a {type(linear).__module__}.{type(linear).__name__}, not a plain "
                            "torch.nn.Linear (an adapter on lm_head?): the lean path computes the head itself and "
                            "would skip what that module adds; train the head with --modules_to_save lm_head, or "
                            f"{HOW_TO_LEAVE}")
    if linear.bias is not None:
        raise LeanPathError(f"the LM head has a bias, which the lean path does not add; {HOW_TO_LEAVE}")
    if getattr(linear, "_hf_hook", None) is not None:
        raise LeanPathError("the LM head is dispatched by accelerate hooks (a device_map over several devices); "
                            f"the lean path needs the head on the hidden states' device; {HOW_TO_LEAVE}")
    return linear


def resolve_head(model):
    """``(owner, head, linear)``: the model that calls ``owner.lm_head``, that module, its effective Linear."""
    owner = unwrap_model(model)
    name = type(owner).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        raise LeanPathError(f"the lean path knows how {', '.join(SUPPORTED_ARCHITECTURES)} turn hidden states into "
                            f"logits, not {name}; {HOW_TO_LEAVE}")
    head = getattr(owner, "lm_head", None)
    if not isinstance(head, nn.Module):
        raise LeanPathError(f"{name} has no lm_head module; {HOW_TO_LEAVE}")
    return owner, head, effective_linear(head)


class _HeadInputCapture(nn.Module):
    """Stands in for ``lm_head`` during the forward: records the hidden states, computes no logits."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.__dict__["linear"] = linear  # not a submodule: the capture owns no parameters
        self.hidden: Optional[Tensor] = None
        self.mm_dtype: Optional[torch.dtype] = None
        self.calls = 0

    def forward(self, hidden_states: Tensor) -> Tensor:
        self.calls += 1
        self.hidden = hidden_states
        dev = hidden_states.device.type
        self.mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        # Empty "logits" that depend on the hidden states and the head weight: DDP's search for unused
        # parameters (find_unused_parameters=True, e.g. under LoRA) starts from the model's outputs, and every
        # parameter's gradient arrives through the loss computed from these two.
        return hidden_states.reshape(-1)[:0] + self.linear.weight.reshape(-1)[:0]


def lean_forward(model, inputs) -> object:
    """The template's ``compute_sft_loss`` on the lean path: the model's outputs without logits, with
    ``outputs.coord_lean`` (``LeanInputs``) for the loss."""
    owner, head, linear = resolve_head(model)
    capture = _HeadInputCapture(linear)
    owner.lm_head = capture
    try:
        outputs = model(**inputs)
    finally:
        owner.lm_head = head
    if capture.calls != 1 or capture.hidden is None:
        raise LeanPathError(f"{type(owner).__name__}.forward called its LM head {capture.calls} times (expected once); "
                            f"{HOW_TO_LEAVE}")
    # Rebuild the output without the placeholder logits, so nothing downstream mistakes it for logits.
    fields = {k: v for k, v in outputs.items() if k != "logits"}
    outputs = type(outputs)(**fields)
    outputs.coord_lean = LeanInputs(hidden=capture.hidden, linear=linear, mm_dtype=capture.mm_dtype)
    return outputs


def run_as_forward(module: nn.Module, fn: Callable, *args):
    """``module(*args)`` with ``fn(weight, *args)`` as its forward, so that the module's hooks run as for any
    call (DeepSpeed ZeRO-3: gather before, release after, gather again for the backward of the outputs)."""
    saved = module.__dict__.get("forward")
    module.forward = lambda *a: fn(module.weight, *a)
    try:
        return module(*args)
    finally:
        if saved is None:
            del module.forward
        else:
            module.forward = saved


def check_gathered(weight: Tensor, hidden: Tensor) -> None:
    """The head weight must be whole inside its forward; a ZeRO-3 partition that was not gathered is not."""
    full = tuple(getattr(weight, "ds_shape", weight.shape))
    if weight.ndim != 2 or tuple(weight.shape) != full or weight.shape[1] != hidden.shape[-1]:
        raise LeanPathError(f"the LM head weight is {tuple(weight.shape)} (full shape {full}) for hidden states of "
                            f"size {hidden.shape[-1]}: it is partitioned (DeepSpeed ZeRO-3) and was not gathered; the "
                            f"lean path needs it whole; {HOW_TO_LEAVE}")
