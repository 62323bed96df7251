"""Presets, validation errors that name the field, and the HF config mapping."""

import pytest

from ling_jax.config import (
    PRESETS,
    ConfigError,
    from_hf_config,
    get_preset,
    to_hf_config,
    validate_model_config,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip_through_hf(name):
    cfg = get_preset(name)
    validate_model_config(cfg)
    back = from_hf_config(to_hf_config(cfg))
    for key, value in to_hf_config(cfg).items():
        if key in back:
            assert back[key] == value or (value is None and back[key] is None), key


def test_reference_values():
    one_t = get_preset("ling_1t")
    assert (
        one_t.num_hidden_layers,
        one_t.hidden_size,
        one_t.num_key_value_heads,
        one_t.first_k_dense_replace,
    ) == (80, 8192, 8, 4)
    assert one_t.head_dim * one_t.partial_rotary_factor == 64
    for name in ("ling_mini_2", "ling_flash_2", "ling_1t"):
        cfg = get_preset(name)
        assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group) == (
            256,
            8,
            8,
            4,
        )
        assert cfg.routed_scaling_factor == 2.5 and cfg.vocab_size == 157184


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "num_attention_heads",
            5,
            "num_attention_heads: 5 must be divisible by num_key_value_heads",
        ),
        ("num_experts", 18, "num_experts: 18 must be divisible by n_group"),
        ("topk_group", 9, "topk_group: 9 must be <= n_group"),
        (
            "num_experts_per_tok",
            9,
            "num_experts_per_tok: 9 exceeds the 8 experts in the kept groups",
        ),
        ("partial_rotary_factor", 0.3, "partial_rotary_factor"),
        ("moe_backend", "fast", "moe_backend: 'fast' is not one of"),
        ("dtype", "float16", "dtype: 'float16' is not one of"),
        ("hidden_size", 0, "hidden_size: must be a positive int"),
        ("first_k_dense_replace", 9, "first_k_dense_replace: 9 exceeds num_hidden_layers"),
        ("remat_policy", "some", "remat_policy"),
    ],
)
def test_validation_names_the_field(field, value, message):
    cfg = get_preset("tiny")
    cfg[field] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_model_config(cfg)


def test_yarn_scaling_validated():
    cfg = get_preset("tiny")
    cfg.rope_scaling = {"type": "yarn", "factor": 0.5}
    with pytest.raises(ConfigError, match="rope_scaling.factor"):
        validate_model_config(cfg)
    cfg.rope_scaling = {"type": "linear", "factor": 2.0}
    with pytest.raises(ConfigError, match="rope_scaling"):
        validate_model_config(cfg)


def test_hf_mapping_details():
    hf = to_hf_config(get_preset("ling_1t"))
    assert hf["model_type"] == "bailing_moe" and hf["routed_scaling_factor"] == 2.5
    assert hf["rotary_dim"] == 64 and hf["partial_rotary_factor"] == 0.5
    assert hf["architectures"] == ["BailingMoeV2ForCausalLM"]
    # Ling-1T style config: rotary_dim without partial_rotary_factor.
    raw = {k: v for k, v in hf.items() if k != "partial_rotary_factor"}
    assert from_hf_config(raw).partial_rotary_factor == 0.5
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        from_hf_config({"model_type": "llama"})
