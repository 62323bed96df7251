"""Model configuration: one ConfigDict whose field names are the HF config keys of Ling 2.0.

Keeping the HF names makes `from_hf_config`/`to_hf_config` a thin mapping (reference §1.1) and lets a
reader compare a preset with a released `config.json` line by line. Fields below the marker are ours.
"""

from __future__ import annotations

import ml_collections

# HF-named architecture fields with the BailingMoeV2Config class defaults (reference §1.1, LV2-config).
ARCHITECTURE_DEFAULTS: dict = dict(
    vocab_size=157184,
    hidden_size=2048,
    intermediate_size=5120,
    num_hidden_layers=20,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=128,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    rope_theta=600000.0,
    rope_scaling=None,
    partial_rotary_factor=0.5,
    use_qk_norm=True,
    use_bias=False,
    use_qkv_bias=False,
    tie_word_embeddings=False,
    num_experts=256,
    num_shared_experts=1,
    num_experts_per_tok=8,
    n_group=8,
    topk_group=4,
    moe_intermediate_size=512,
    moe_shared_expert_intermediate_size=None,  # None: moe_intermediate_size * num_shared_experts
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    score_function="sigmoid",
    norm_topk_prob=True,
    moe_router_enable_expert_bias=True,
    router_dtype="fp32",
    num_nextn_predict_layers=0,
    mtp_loss_scaling_factor=0.0,
    initializer_range=0.02,
    pad_token_id=156892,
    eos_token_id=156892,
)

# Runtime fields that no HF config carries.
RUNTIME_DEFAULTS: dict = dict(
    name="custom",
    dtype="float32",  # activation/compute dtype; router, norms and softmax always run in fp32
    param_dtype="float32",
    moe_backend="blocked",  # key of ling_jax.ops.expert_compute registry
    moe_block_size=0,  # rows per block for the `blocked` backend; 0 = chosen from the token count
    scan_layers=True,  # scan the dense and MoE stacks (compile cost of ~one layer); False unrolls
    remat_policy="none",
    attention_impl="xla",
    attention_backend="reference",  # key of ling_jax.ops.attention_registry: reference/tiled/splash
    attention_block_q=512,  # query rows per tile (`tiled`, `splash`; splash wants multiples of 128)
    attention_block_kv=512,  # key rows per tile
    # Train loss over this many strided token chunks (ops.token_loss): [tokens, vocab] logits of
    # 1/n of the tokens live at a time, the backward recomputes them; 1 = all logits at once.
    loss_chunks=1,
    # Blockwise FP8 training (reference §5): QKV/output, dense MLP and shared-expert projections in
    # FP8, and the routed experts through the FP8 twin of moe_backend (FP8_EXPERT_BACKENDS).
    fp8=False,
)

# moe_backend -> the expert backend used when fp8=True: `blocked` gets its fake-quant FP8 twin (fast
# on CPU), the FP8 backends stay; dense/ragged_dot/megablox have no FP8 form (validation rejects).
FP8_EXPERT_BACKENDS: dict = {
    "blocked": "blocked_fp8",
    "blocked_fp8": "blocked_fp8",
    "pallas_fp8": "pallas_fp8",
}


def model_config(**overrides) -> ml_collections.ConfigDict:
    """A model config with class defaults, updated by `overrides` (unknown keys are an error)."""
    fields = {**ARCHITECTURE_DEFAULTS, **RUNTIME_DEFAULTS}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown model config field(s) {unknown}; known fields: {sorted(fields)}")
    fields.update(overrides)
    # rope_scaling may be None or a dict; ConfigDict needs the type declared for later overrides.
    cfg = ml_collections.ConfigDict(fields)
    return cfg


def rotary_dim(cfg) -> int:
    """Number of rotated dims per head: head_dim * partial_rotary_factor (reference §2.4)."""
    return int(round(cfg.head_dim * cfg.partial_rotary_factor))


def shared_expert_width(cfg) -> int:
    """Width of the shared-expert SwiGLU (reference §1.1: moe_intermediate_size × num_shared)."""
    if cfg.moe_shared_expert_intermediate_size:
        return int(cfg.moe_shared_expert_intermediate_size)
    return int(cfg.moe_intermediate_size * cfg.num_shared_experts)


def expert_backend(cfg) -> str:
    """The expert-compute backend a MoE layer runs: moe_backend, or its FP8 twin when fp8=True."""
    return FP8_EXPERT_BACKENDS[cfg.moe_backend] if cfg.fp8 else cfg.moe_backend


def linear_quant(cfg) -> str | None:
    """The `quant` of model/linear.project for the FP8-eligible projections ("fp8" or None)."""
    return "fp8" if cfg.fp8 else None


def num_moe_layers(cfg) -> int:
    return cfg.num_hidden_layers - cfg.first_k_dense_replace
