"""The model config's mapping to and from a Hugging Face `config.json` (reference §1.1, LV2-convert)."""

from __future__ import annotations

from typing import Any

import ml_collections

from ling_jax.config.model import ARCHITECTURE_DEFAULTS, model_config
from ling_jax.config.validation import ConfigError

# Keys the official converter writes for released checkpoints, besides our architecture fields.
_HF_STATIC = {
    "architectures": ["BailingMoeV2ForCausalLM"],
    "model_type": "bailing_moe",
    "auto_map": {
        "AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
        "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
        "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM",
    },
    "attention_dropout": 0.0,
    "embedding_dropout": 0.0,
    "output_dropout": 0.0,
    "use_cache": True,
    "use_rmsnorm": True,
}
# HF keys that carry nothing for the forward pass; accepted and ignored on import.
_HF_IGNORED = {
    "architectures",
    "model_type",
    "auto_map",
    "attention_dropout",
    "embedding_dropout",
    "output_dropout",
    "use_cache",
    "use_rmsnorm",
    "transformers_version",
    "torch_dtype",
    "max_window_layers",
    "quantization_config",
    "bos_token_id",
    "use_sliding_window",
    "sliding_window",
    "output_router_logits",
    "tokenizer_class",
    "_name_or_path",
    "dtype",
}


def from_hf_config(hf: dict[str, Any], **runtime) -> ml_collections.ConfigDict:
    """Build a model config from a parsed HF config.json; missing keys take the class defaults."""
    if not isinstance(hf, dict):
        raise ConfigError(f"config.json must hold a JSON object, got {type(hf).__name__}")
    if hf.get("model_type", "bailing_moe") not in ("bailing_moe", "bailing_moe_v2"):
        raise ConfigError(
            f"config.json: model_type {hf['model_type']!r} is not a Ling 2.0 model "
            "(expected 'bailing_moe')"
        )
    fields = {k: v for k, v in hf.items() if k in ARCHITECTURE_DEFAULTS}
    if "rotary_dim" in hf and "partial_rotary_factor" not in hf:
        # Ling-1T writes rotary_dim instead of partial_rotary_factor (reference §1.1, NA-PR).
        head_dim = int(hf.get("head_dim", ARCHITECTURE_DEFAULTS["head_dim"]))
        fields["partial_rotary_factor"] = int(hf["rotary_dim"]) / head_dim
    if isinstance(fields.get("eos_token_id"), list):
        fields["eos_token_id"] = fields["eos_token_id"][0]
    for key in (
        "rope_theta",
        "rms_norm_eps",
        "routed_scaling_factor",
        "partial_rotary_factor",
        "mtp_loss_scaling_factor",
        "initializer_range",
    ):
        if key in fields and isinstance(fields[key], int):
            fields[key] = float(fields[key])
    return model_config(**fields, **runtime)


def to_hf_config(cfg, *, torch_dtype: str = "bfloat16") -> dict[str, Any]:
    """The config.json of an exported checkpoint, with the key set released checkpoints carry."""
    out: dict[str, Any] = dict(_HF_STATIC)
    for key in ARCHITECTURE_DEFAULTS:
        value = cfg[key]
        out[key] = dict(value) if isinstance(value, ml_collections.ConfigDict) else value
    if out["moe_shared_expert_intermediate_size"] is None:
        out["moe_shared_expert_intermediate_size"] = (
            cfg.moe_intermediate_size * cfg.num_shared_experts
        )
    out["rotary_dim"] = int(round(cfg.head_dim * cfg.partial_rotary_factor))
    out["routed_scaling_factor"] = float(cfg.routed_scaling_factor)  # class default is 1.0
    out["torch_dtype"] = torch_dtype
    return dict(sorted(out.items()))


def hf_ignored_keys() -> set[str]:
    return set(_HF_IGNORED)
