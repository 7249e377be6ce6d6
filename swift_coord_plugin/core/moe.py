"""Which Qwen3-VL checkpoints are mixture-of-experts models (read from their config; no ms-swift)."""

# The checkpoint's config ``model_type`` / ``architectures`` entry of Qwen3-VL's mixture-of-experts models.
MOE_MODEL_TYPE = "qwen3_vl_moe"
MOE_ARCHITECTURE = "Qwen3VLMoeForConditionalGeneration"


def is_moe_checkpoint(config) -> bool:
    """True for a Qwen3-VL mixture-of-experts checkpoint: its config's ``model_type`` is ``qwen3_vl_moe`` (the
    config class transformers builds, and the only class that can hold its expert weights) or its
    ``architectures`` names ``Qwen3VLMoeForConditionalGeneration``. ``config``: a transformers config or dict."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    return get("model_type") == MOE_MODEL_TYPE or MOE_ARCHITECTURE in (get("architectures") or [])
