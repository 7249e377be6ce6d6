"""A vLLM-loadable copy of a mixture-of-experts Qwen3-VL checkpoint written by transformers 5.

transformers 5 holds the fused expert weights of ``Qwen3VLMoeForConditionalGeneration`` as
``mlp.experts.gate_up_proj`` ``[experts, 2 * moe_intermediate_size, hidden_size]`` and ``mlp.experts.down_proj``
``[experts, hidden_size, moe_intermediate_size]`` and saves them so. The published Qwen3-VL MoE checkpoints
(30B-A3B, 235B-A22B) store both transposed in their last two dimensions: ``gate_up_proj`` ``[experts, hidden,
2 * intermediate]``, ``down_proj`` ``[experts, intermediate, hidden]``. transformers' conversion mapping for
``qwen3_vl_moe`` (``Transpose(1, 2, check_dims=True)``) reads either layout, transposing only when the stored
shape differs from the module's; its reverse on save compares the same way and so never transposes back. vLLM's
``Qwen3VLMoeDecoderLayer`` (``is_fused_checkpoint_transposed=True``) always transposes the last two dimensions and
therefore accepts only the published layout. vLLM also reads ``text_config.norm_topk_prob`` (whether the top-k
router weights are renormalised to sum to 1), which ``Qwen3VLMoeTextConfig`` does not write;
``Qwen3VLMoeTextTopKRouter`` always renormalises, so ``true`` is its equivalent.

``export_for_vllm`` writes a copy with the published layout and ``norm_topk_prob: true``: it loads into vLLM
and, with identical weights, into transformers 5. No ms-swift import here; torch is imported only where weights
are converted, so ``coord-export-vllm --help`` and ``--check`` of a dense checkpoint (``shell/eval.sh`` runs it
before each vLLM evaluation) start without it.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from safetensors import safe_open

from .core.moe import MOE_MODEL_TYPE, is_moe_checkpoint

GATE_UP = "mlp.experts.gate_up_proj"
DOWN = "mlp.experts.down_proj"
# Written by a trainer, not needed to load the model: not copied.
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "latest",
                        "zero_to_fp32.py")


class ExportError(ValueError):
    """A checkpoint that cannot be exported (the message names the file and the problem)."""


@dataclass
class ExportReport:
    """What ``export_for_vllm`` did: tensors transposed / already in the published layout, config keys set,
    files copied unchanged, files and folders left out (training state)."""
    transposed: List[str] = field(default_factory=list)
    already_published: List[str] = field(default_factory=list)
    config_set: Dict[str, object] = field(default_factory=dict)
    copied: List[str] = field(default_factory=list)
    left_out: List[str] = field(default_factory=list)
    moe: bool = False


def _text_config(config: dict, path: str) -> dict:
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise ExportError(f"{path}: no 'text_config' object (not a Qwen3-VL config)")
    for key in ("hidden_size", "moe_intermediate_size"):
        if not isinstance(text.get(key), int):
            raise ExportError(f"{path}: text_config.{key} missing or not an integer (got {text.get(key)!r})")
    return text


def _num_experts(text: dict, path: str) -> int:
    """transformers 5 writes ``num_local_experts`` (``num_experts`` is its alias); the published configs
    ``num_experts``."""
    n = text.get("num_local_experts", text.get("num_experts"))
    if not isinstance(n, int):
        raise ExportError(f"{path}: text_config.num_local_experts / num_experts missing or not an integer")
    return n


def expert_layouts(hidden: int, intermediate: int, experts: int) -> Dict[str, Tuple[tuple, tuple]]:
    """For each fused expert weight (suffix ``GATE_UP`` / ``DOWN``): ``(transformers_shape, published_shape)``.

    Shapes in elements: gate_up ``[E, 2I, H]`` -> ``[E, H, 2I]``, down ``[E, H, I]`` -> ``[E, I, H]`` (H hidden
    size, I ``moe_intermediate_size``, E experts).

    Raises ``ExportError`` when the two layouts of a weight have the same shape (``2I == H`` or ``I == H``):
    transformers' loader then cannot tell them apart and would read the published layout without transposing it.
    """
    layouts = {GATE_UP: ((experts, 2 * intermediate, hidden), (experts, hidden, 2 * intermediate)),
               DOWN: ((experts, hidden, intermediate), (experts, intermediate, hidden))}
    for name, (hf, pub) in layouts.items():
        if hf == pub:
            raise ExportError(
                f"{name}: shape {list(hf)} is square in its last two dimensions (hidden_size {hidden}, "
                f"moe_intermediate_size {intermediate}); transformers cannot tell its two layouts apart, so a copy "
                "in vLLM's layout would not reload correctly in transformers")
    return layouts


def _convert_shard(src: str, dst: str, layouts, report: ExportReport) -> None:
    import torch
    from safetensors.torch import save_file

    tensors: Dict[str, "torch.Tensor"] = {}
    with safe_open(src, framework="pt") as f:
        metadata = f.metadata()
        for key in f.keys():
            t = f.get_tensor(key)
            suffix = next((s for s in layouts if key.endswith(s)), None)
            if suffix is not None:
                hf, pub = layouts[suffix]
                if tuple(t.shape) == hf:
                    t = t.transpose(1, 2).contiguous()
                    report.transposed.append(key)
                elif tuple(t.shape) == pub:
                    report.already_published.append(key)
                else:
                    raise ExportError(f"{src}: {key} has shape {list(t.shape)}; the config gives {list(hf)} "
                                      f"(transformers) or {list(pub)} (published layout)")
            tensors[key] = t
    save_file(tensors, dst, metadata=metadata or {"format": "pt"})


def export_for_vllm(ckpt_dir: str, out_dir: str, overwrite: bool = False) -> ExportReport:
    """Write to ``out_dir`` a copy of the checkpoint ``ckpt_dir`` that vLLM loads.

    For a ``qwen3_vl_moe`` checkpoint: every ``*.mlp.experts.gate_up_proj`` / ``*.mlp.experts.down_proj`` in the
    ``*.safetensors`` files is transposed in its last two dimensions to the published layout (one already there is
    kept), and ``config.json`` gets ``text_config.norm_topk_prob = true``. A dense checkpoint needs no conversion
    and is copied unchanged. Every other top-level file (tokenizer, processor, generation config, ``args.json``,
    the safetensors index) is copied; training state (optimizer, scheduler, trainer state, ``global_step*`` and
    other folders) is left out.

    Raises ``ExportError`` for: a missing/unreadable ``config.json``, ``.bin`` weights, no safetensors file,
    an expert weight whose shape matches neither layout, a square expert matrix (see ``expert_layouts``), an
    ``out_dir`` that exists and is not empty (unless ``overwrite``) or equals ``ckpt_dir``. An ``out_dir`` this
    call created is removed again when it fails.
    """
    ckpt_dir, out_dir = os.path.abspath(ckpt_dir), os.path.abspath(out_dir)
    config_path = os.path.join(ckpt_dir, "config.json")
    if not os.path.isfile(config_path):
        if os.path.isfile(os.path.join(ckpt_dir, "adapter_config.json")):
            raise ExportError(f"{ckpt_dir}: a LoRA adapter, not a model; merge it first "
                              "(swift export --adapters ... --merge_lora true) and export the merged folder")
        raise ExportError(f"{config_path}: not found (not a model checkpoint folder)")
    if out_dir == ckpt_dir:
        raise ExportError(f"{out_dir}: the output folder must differ from the checkpoint")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ExportError(f"{out_dir}: exists and is not empty (pass overwrite)")
    config = _read_config(config_path)
    names = sorted(os.listdir(ckpt_dir))
    shards = [n for n in names if n.endswith(".safetensors")]
    if any(n.endswith(".bin") and n.startswith("pytorch_model") for n in names):
        raise ExportError(f"{ckpt_dir}: .bin weights; save with safetensors (ms-swift's default)")
    if not shards:
        raise ExportError(f"{ckpt_dir}: no *.safetensors weights")

    report = ExportReport(moe=is_moe_checkpoint(config))
    layouts = None
    if report.moe:
        text = _text_config(config, config_path)
        layouts = expert_layouts(text["hidden_size"], text["moe_intermediate_size"], _num_experts(text, config_path))
    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        for name in names:
            src, dst = os.path.join(ckpt_dir, name), os.path.join(out_dir, name)
            if os.path.isdir(src) or name in TRAINING_STATE_FILES or name.startswith("rng_state"):
                report.left_out.append(name)
            elif name == "config.json" and report.moe:
                config["text_config"]["norm_topk_prob"] = True
                report.config_set["text_config.norm_topk_prob"] = True
                with open(dst, "w") as f:
                    json.dump(config, f, indent=2, sort_keys=True)
                    f.write("\n")
            elif name in shards and report.moe:
                _convert_shard(src, dst, layouts, report)
            else:
                shutil.copy2(src, dst)
                report.copied.append(name)
        if report.moe and not (report.transposed or report.already_published):
            raise ExportError(f"{ckpt_dir}: a {MOE_MODEL_TYPE} checkpoint but no '*.{GATE_UP}' / '*.{DOWN}' weights")
    except BaseException:
        if created:  # no half-written copy left behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return report


def _read_config(config_path: str) -> dict:
    """``config.json`` as a dict; raises ``ExportError`` naming the file when it is not valid JSON."""
    try:
        with open(config_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ExportError(f"{config_path}: not valid JSON ({e})") from e


def vllm_export_needed(ckpt_dir: str) -> Optional[str]:
    """Why the checkpoint folder ``ckpt_dir`` must go through ``export_for_vllm`` before vLLM loads it, or
    ``None`` (dense, or already exported). Reads ``config.json`` and the safetensors headers only (no weights).

    Raises ``ExportError`` for a folder without a readable ``config.json`` (an adapter folder is ``None``:
    vLLM is not given adapters here).
    """
    config_path = os.path.join(ckpt_dir, "config.json")
    if not os.path.isfile(config_path):
        if os.path.isfile(os.path.join(ckpt_dir, "adapter_config.json")):
            return None
        raise ExportError(f"{config_path}: not found (not a model checkpoint folder)")
    config = _read_config(config_path)
    if not is_moe_checkpoint(config):
        return None
    text = _text_config(config, config_path)
    if "norm_topk_prob" not in text:
        return f"{config_path}: text_config.norm_topk_prob missing (vLLM reads it)"
    layouts = expert_layouts(text["hidden_size"], text["moe_intermediate_size"], _num_experts(text, config_path))
    for name in sorted(os.listdir(ckpt_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(ckpt_dir, name), framework="pt") as f:
                for key in f.keys():
                    suffix = next((s for s in layouts if key.endswith(s)), None)
                    if suffix and tuple(f.get_slice(key).get_shape()) == layouts[suffix][0]:
                        return f"{name}: {key} in transformers' layout, not vLLM's"
    return None


def summary(report: ExportReport) -> str:
    """One paragraph for the command line."""
    if not report.moe:
        return f"dense checkpoint: nothing to convert; copied {len(report.copied)} files"
    parts = [f"transposed {len(report.transposed)} fused expert weights to vLLM's layout"]
    if report.already_published:
        parts.append(f"{len(report.already_published)} already in it")
    parts.append("set " + ", ".join(f"{k}={json.dumps(v)}" for k, v in report.config_set.items()))
    parts.append(f"copied {len(report.copied)} other files")
    if report.left_out:
        parts.append("left out (training state): " + ", ".join(report.left_out))
    return "; ".join(parts)
