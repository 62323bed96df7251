"""BailingMoeV2 (Ling 2.0) config for transformers, written for ling-jax exports.

Reads the `config.json` key set of released Ling 2.0 checkpoints (class defaults are the released
config class's). An FP8 `quantization_config` is kept aside as `fp8_weight_block_size` so that
transformers does not route the load through its GPU-only FP8 path: the model dequantises on load.
"""

from __future__ import annotations

from transformers import PretrainedConfig

SUPPORTED_ROPE_TYPES = ("default", "yarn")


class BailingMoeV2Config(PretrainedConfig):
    model_type = "bailing_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 157184,
        hidden_size: int = 2048,
        intermediate_size: int = 5120,
        num_hidden_layers: int = 20,
        num_attention_heads: int = 16,
        num_key_value_heads: int = 4,
        head_dim: int | None = 128,
        hidden_act: str = "silu",
        use_qkv_bias: bool = False,
        use_bias: bool = False,
        use_qk_norm: bool = True,
        rms_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = False,
        embedding_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        output_dropout: float = 0.0,
        initializer_range: float = 0.02,
        max_position_embeddings: int = 32768,
        rope_theta: float = 600000.0,
        rope_scaling: dict | None = None,
        partial_rotary_factor: float | None = None,
        rotary_dim: int | None = None,
        use_cache: bool = True,
        num_experts: int = 256,
        num_shared_experts: int = 1,
        num_experts_per_tok: int = 8,
        n_group: int = 8,
        topk_group: int = 4,
        moe_intermediate_size: int = 512,
        moe_shared_expert_intermediate_size: int | None = None,
        first_k_dense_replace: int = 1,
        routed_scaling_factor: float = 1.0,
        score_function: str = "sigmoid",
        norm_topk_prob: bool = True,
        moe_router_enable_expert_bias: bool = True,
        router_dtype: str = "fp32",
        num_nextn_predict_layers: int = 0,
        mtp_loss_scaling_factor: float = 0.0,
        pad_token_id: int | None = 156892,
        eos_token_id: int | list[int] | None = 156892,
        **kwargs,
    ):
        quantization = kwargs.pop("quantization_config", None)
        self.fp8_weight_block_size = kwargs.pop("fp8_weight_block_size", None)
        if quantization is not None:
            if _as_dict(quantization).get("quant_method") != "fp8":
                kwargs["quantization_config"] = quantization  # other methods: transformers' own
            else:
                self.fp8_weight_block_size = list(
                    _as_dict(quantization).get("weight_block_size") or [128, 128])
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_bias = use_bias
        self.use_qk_norm = use_qk_norm
        self.rms_norm_eps = rms_norm_eps
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.output_dropout = output_dropout
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.partial_rotary_factor = partial_rotary_factor
        self.rotary_dim = rotary_dim
        self.use_cache = use_cache
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.moe_intermediate_size = moe_intermediate_size
        self.moe_shared_expert_intermediate_size = moe_shared_expert_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.routed_scaling_factor = routed_scaling_factor
        self.score_function = score_function
        self.norm_topk_prob = norm_topk_prob
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.router_dtype = router_dtype
        self.num_nextn_predict_layers = num_nextn_predict_layers
        self.mtp_loss_scaling_factor = mtp_loss_scaling_factor
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._check()

    @property
    def rotary_width(self) -> int:
        """Rotated dims per head: partial_rotary_factor wins; Ling-1T writes rotary_dim only."""
        if self.partial_rotary_factor is not None:
            return int(round(self.head_dim * self.partial_rotary_factor))
        if self.rotary_dim is not None:
            return int(self.rotary_dim)
        return self.head_dim

    @property
    def shared_expert_width(self) -> int:
        return self.moe_shared_expert_intermediate_size or (
            self.moe_intermediate_size * self.num_shared_experts)

    def _check(self) -> None:
        """Reject what this implementation does not compute, naming the config.json key."""
        problems = []
        if self.score_function != "sigmoid":
            problems.append(f"score_function={self.score_function!r} (only 'sigmoid')")
        if self.hidden_act != "silu":
            problems.append(f"hidden_act={self.hidden_act!r} (only 'silu')")
        if self.use_bias or self.use_qkv_bias:
            problems.append("use_bias/use_qkv_bias=true (Ling 2.0 linears have no bias)")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                            f"of num_key_value_heads={self.num_key_value_heads}")
        if self.n_group > 1 and self.num_experts % self.n_group:
            problems.append(f"num_experts={self.num_experts} is not a multiple of "
                            f"n_group={self.n_group}")
        kind = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type"))
        if self.rope_scaling and kind not in SUPPORTED_ROPE_TYPES:
            problems.append(f"rope_scaling type {kind!r} (supported: {SUPPORTED_ROPE_TYPES})")
        if problems:
            raise ValueError("config.json: unsupported " + "; ".join(problems))


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else value.to_dict()
