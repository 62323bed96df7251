"""One place that rejects impossible model configs, before anything is built or compiled."""

from __future__ import annotations

from ling_jax.config.model import ARCHITECTURE_DEFAULTS, FP8_EXPERT_BACKENDS, RUNTIME_DEFAULTS

DTYPES = ("float32", "bfloat16")
# Names of ling_jax.ops.expert_compute backends (config/ imports nothing of ours; ops checks the match).
MOE_BACKENDS = ("blocked", "all_experts", "ragged_dot", "dense", "pallas_fp8", "megablox",
                "blocked_fp8", "ep_all_to_all", "ep_ragged_all_to_all")
# Names of ling_jax.ops.attention_registry backends (the ops tests check the match).
ATTENTION_BACKENDS = ("reference", "tiled", "splash")
REMAT_POLICIES = ("none", "full", "save_dots", "save_dots_no_batch", "offload",
                  "offload_layer_inputs")
YARN_KEYS = (
    "type",
    "rope_type",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "attention_factor",
)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and what is allowed."""


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"model.{field}: {message}")


def _positive_ints(cfg) -> None:
    for field in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_experts",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "moe_intermediate_size",
        "loss_chunks",
    ):
        value = cfg[field]
        _require(
            isinstance(value, int) and value > 0, field, f"must be a positive int, got {value!r}"
        )
    for field in ("first_k_dense_replace", "num_shared_experts", "num_nextn_predict_layers"):
        value = cfg[field]
        _require(
            isinstance(value, int) and value >= 0, field, f"must be an int >= 0, got {value!r}"
        )


def _validate_rope(cfg) -> None:
    rot = cfg.head_dim * cfg.partial_rotary_factor
    _require(
        0 < cfg.partial_rotary_factor <= 1,
        "partial_rotary_factor",
        f"must be in (0, 1], got {cfg.partial_rotary_factor}",
    )
    _require(
        abs(rot - round(rot)) < 1e-9 and round(rot) % 2 == 0,
        "partial_rotary_factor",
        f"head_dim*partial_rotary_factor = {rot} must be an even integer (rotate-half pairs)",
    )
    _require(cfg.rope_theta > 0, "rope_theta", f"must be > 0, got {cfg.rope_theta}")
    scaling = cfg.rope_scaling
    if scaling is None:
        return
    scaling = dict(scaling)
    kind = scaling.get("rope_type", scaling.get("type"))
    _require(
        kind in ("yarn", "default"),
        "rope_scaling",
        f"type {kind!r} is not supported; use 'yarn' or null",
    )
    unknown = sorted(set(scaling) - set(YARN_KEYS))
    _require(not unknown, "rope_scaling", f"unknown key(s) {unknown}; allowed {list(YARN_KEYS)}")
    if kind == "yarn":
        _require(
            float(scaling.get("factor", 0)) >= 1,
            "rope_scaling.factor",
            f"must be >= 1 for yarn, got {scaling.get('factor')}",
        )


def _validate_moe(cfg) -> None:
    _require(
        cfg.num_experts % cfg.n_group == 0,
        "num_experts",
        f"{cfg.num_experts} must be divisible by n_group={cfg.n_group}",
    )
    _require(
        cfg.topk_group <= cfg.n_group,
        "topk_group",
        f"{cfg.topk_group} must be <= n_group={cfg.n_group}",
    )
    per_group = cfg.num_experts // cfg.n_group
    _require(
        per_group >= 2 or cfg.n_group == 1,
        "n_group",
        f"each group needs >= 2 experts (group score = sum of top-2); got {per_group}",
    )
    kept = per_group * cfg.topk_group
    _require(
        cfg.num_experts_per_tok <= kept,
        "num_experts_per_tok",
        f"{cfg.num_experts_per_tok} exceeds the {kept} experts in the kept groups "
        f"(topk_group={cfg.topk_group} x {per_group} experts per group)",
    )
    _require(
        cfg.score_function == "sigmoid",
        "score_function",
        f"only 'sigmoid' (Ling 2.0) is supported, got {cfg.score_function!r}",
    )
    _require(
        cfg.first_k_dense_replace <= cfg.num_hidden_layers,
        "first_k_dense_replace",
        f"{cfg.first_k_dense_replace} exceeds num_hidden_layers={cfg.num_hidden_layers}",
    )
    _require(
        cfg.routed_scaling_factor > 0,
        "routed_scaling_factor",
        f"must be > 0, got {cfg.routed_scaling_factor}",
    )


def _validate_attention(cfg) -> None:
    _require(
        cfg.attention_backend in ATTENTION_BACKENDS,
        "attention_backend",
        f"{cfg.attention_backend!r} is not one of {list(ATTENTION_BACKENDS)}",
    )
    for field in ("attention_block_q", "attention_block_kv"):
        value = cfg[field]
        _require(isinstance(value, int) and value > 0, field,
                 f"must be a positive int, got {value!r}")
        _require(cfg.attention_backend != "splash" or value % 128 == 0, field,
                 f"splash attention tiles must be multiples of 128, got {value}")


def _validate_runtime(cfg) -> None:
    for field in ("dtype", "param_dtype"):
        _require(cfg[field] in DTYPES, field, f"{cfg[field]!r} is not one of {list(DTYPES)}")
    _require(
        cfg.moe_backend in MOE_BACKENDS,
        "moe_backend",
        f"{cfg.moe_backend!r} is not one of {list(MOE_BACKENDS)}",
    )
    _validate_attention(cfg)
    _require(isinstance(cfg.fp8, bool), "fp8", f"must be true or false, got {cfg.fp8!r}")
    _require(
        not cfg.fp8 or cfg.moe_backend in FP8_EXPERT_BACKENDS,
        "moe_backend",
        f"{cfg.moe_backend!r} has no FP8 form; with fp8=true use one of {sorted(FP8_EXPERT_BACKENDS)}",
    )
    _require(
        cfg.remat_policy in REMAT_POLICIES,
        "remat_policy",
        f"{cfg.remat_policy!r} is not one of {list(REMAT_POLICIES)}",
    )
    _require(
        cfg.hidden_act == "silu", "hidden_act", f"only 'silu' is supported, got {cfg.hidden_act!r}"
    )
    _require(
        not cfg.use_bias and not cfg.use_qkv_bias,
        "use_bias",
        "Ling 2.0 has no bias tensors; set use_bias and use_qkv_bias to false",
    )
    _require(
        not cfg.tie_word_embeddings,
        "tie_word_embeddings",
        "Ling 2.0 unties embedding and head; tied weights are not supported",
    )


def validate_model_config(cfg) -> None:
    """Raise ConfigError naming the first impossible field; return None when the config can work."""
    missing = sorted((set(ARCHITECTURE_DEFAULTS) | set(RUNTIME_DEFAULTS)) - set(cfg.keys()))
    _require(not missing, "<fields>", f"missing field(s) {missing}")
    _positive_ints(cfg)
    _require(
        cfg.num_attention_heads % cfg.num_key_value_heads == 0,
        "num_attention_heads",
        f"{cfg.num_attention_heads} must be divisible by num_key_value_heads="
        f"{cfg.num_key_value_heads} (GQA)",
    )
    _require(cfg.rms_norm_eps > 0, "rms_norm_eps", f"must be > 0, got {cfg.rms_norm_eps}")
    _validate_rope(cfg)
    _validate_moe(cfg)
    _validate_runtime(cfg)
