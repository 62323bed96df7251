"""Named model presets: the released Ling 2.0 sizes (reference §1.1) and small ones for CPU work."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from ling_jax.config.model import model_config


def ling_mini_2() -> ml_collections.ConfigDict:
    """Ling-mini-2.0: 16.26B total, 1.43B activated."""
    return model_config(
        name="ling_mini_2",
        num_hidden_layers=20,
        hidden_size=2048,
        intermediate_size=5120,
        moe_intermediate_size=512,
        moe_shared_expert_intermediate_size=512,
        num_attention_heads=16,
        num_key_value_heads=4,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        mtp_loss_scaling_factor=0.1,
        dtype="bfloat16",
        param_dtype="bfloat16",
    )


def ling_flash_2() -> ml_collections.ConfigDict:
    """Ling-flash-2.0: 102.9B total, 6.15B activated."""
    return model_config(
        name="ling_flash_2",
        num_hidden_layers=32,
        hidden_size=4096,
        intermediate_size=9216,
        moe_intermediate_size=1024,
        moe_shared_expert_intermediate_size=1024,
        num_attention_heads=32,
        num_key_value_heads=4,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        mtp_loss_scaling_factor=0.1,
        dtype="bfloat16",
        param_dtype="bfloat16",
    )


def ling_1t() -> ml_collections.ConfigDict:
    """Ling-1T: 999.7B total, 51.05B activated; rotates the first 64 of 128 head dims."""
    return model_config(
        name="ling_1t",
        num_hidden_layers=80,
        hidden_size=8192,
        intermediate_size=18432,
        moe_intermediate_size=2048,
        moe_shared_expert_intermediate_size=2048,
        num_attention_heads=64,
        num_key_value_heads=8,
        first_k_dense_replace=4,
        num_nextn_predict_layers=1,
        mtp_loss_scaling_factor=0.1,
        dtype="bfloat16",
        param_dtype="bfloat16",
    )


def bench_mini() -> ml_collections.ConfigDict:
    """The CPU comparison shape of shared/docs/benchmarks.md (~54M matmul-active params)."""
    return model_config(
        name="bench_mini",
        vocab_size=16384,
        hidden_size=512,
        num_hidden_layers=8,
        first_k_dense_replace=1,
        intermediate_size=1536,
        num_experts=64,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        moe_intermediate_size=256,
        moe_shared_expert_intermediate_size=256,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        num_nextn_predict_layers=1,
        mtp_loss_scaling_factor=0.1,
        pad_token_id=0,
        eos_token_id=1,
    )


def tiny() -> ml_collections.ConfigDict:
    """A few-million-parameter Ling 2.0 that trains on a 2-core CPU in minutes."""
    return model_config(
        name="tiny",
        vocab_size=2048,
        hidden_size=128,
        num_hidden_layers=4,
        first_k_dense_replace=1,
        intermediate_size=384,
        num_experts=16,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        moe_intermediate_size=64,
        moe_shared_expert_intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        num_nextn_predict_layers=1,
        mtp_loss_scaling_factor=0.1,
        initializer_range=0.02,
        pad_token_id=0,
        eos_token_id=1,
    )


PRESETS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "ling_1t": ling_1t,
    "ling_flash_2": ling_flash_2,
    "ling_mini_2": ling_mini_2,
    "bench_mini": bench_mini,
    "tiny": tiny,
}


def get_preset(name: str) -> ml_collections.ConfigDict:
    """The preset called `name`; the error lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
