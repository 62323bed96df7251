"""Model configs: presets, validation and the HF config mapping. Imports nothing else of ours."""

from ling_jax.config.hf import from_hf_config, to_hf_config
from ling_jax.config.model import (
    model_config,
    num_moe_layers,
    rotary_dim,
    shared_expert_width,
)
from ling_jax.config.presets import PRESETS, get_preset
from ling_jax.config.validation import ConfigError, validate_model_config

__all__ = [
    "PRESETS",
    "ConfigError",
    "from_hf_config",
    "get_preset",
    "model_config",
    "num_moe_layers",
    "rotary_dim",
    "shared_expert_width",
    "to_hf_config",
    "validate_model_config",
]
