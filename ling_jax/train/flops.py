"""Model FLOPs for MFU, with MaxText's convention (`calculate_tflops_training_per_device`).

Per token of a packed sequence of length S, training (forward + backward = 3 × forward):

    flops = 6 · N_matmul  +  6 · L_attn · n_h · d · S

* N_matmul: weights that take part in a matmul for one token (2 FLOPs per multiply-add, ×3 for
  fwd+bwd): per layer QKV H·(n_h + 2·n_kv)·d and output n_h·d·H; dense SwiGLU 3·H·I; MoE router
  H·E plus 3·H·m for each of the top-k routed experts and 3·H·m_s for the shared expert; the LM head
  H·V (the embedding lookup is not a matmul). MaxText counts the same terms.
* Attention scores and values: MaxText takes 4·S²·n_h·d per sequence and layer (QKᵀ and AV),
  halves it for the causal mask (S²/2, not S(S+1)/2) and multiplies by 3, i.e. 6·n_h·d·S per token
  and layer. Packing does not reduce it (documents in a row are counted as one causal sequence).
* MTP (num_nextn_predict_layers = D): MaxText has no MTP term; we add, per MTP layer, eh_proj 2H·H,
  a full attention layer, an MoE block and a second LM-head pass, so L_attn = L + D.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """The sizes that set the FLOPs; field names follow the HF BailingMoeV2 config."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int = 0
    moe_intermediate_size: int = 0
    num_experts: int = 0
    num_experts_per_tok: int = 0
    num_shared_experts: int = 0
    moe_shared_expert_intermediate_size: int | None = None
    first_k_dense_replace: int = 0
    num_nextn_predict_layers: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.name == "moe_shared_expert_intermediate_size":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"model dims: {f.name} must be an integer >= 0, got {v!r}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            if getattr(self, name) == 0:
                raise ValueError(f"model dims: {name} must be > 0")
        if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError(
                f"model dims: num_experts_per_tok={self.num_experts_per_tok} must be in "
                f"[1, num_experts={self.num_experts}]"
            )
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError("model dims: first_k_dense_replace exceeds num_hidden_layers")

    @property
    def num_dense_layers(self) -> int:
        return self.num_hidden_layers if self.num_experts == 0 else self.first_k_dense_replace

    @property
    def shared_expert_width(self) -> int:
        # HF BailingMoeV2 builds the shared expert with moe_intermediate_size × num_shared_experts;
        # released configs also carry moe_shared_expert_intermediate_size (same value): preferred.
        if self.num_shared_experts == 0:
            return 0
        if self.moe_shared_expert_intermediate_size is not None:
            return self.moe_shared_expert_intermediate_size
        return self.moe_intermediate_size * self.num_shared_experts


def model_dims(cfg: Any) -> ModelDims:
    """ModelDims from a ModelDims, a mapping or any object with the HF-style field names."""
    if isinstance(cfg, ModelDims):
        return cfg
    get = cfg.get if isinstance(cfg, Mapping) else functools.partial(getattr, cfg)
    values = {}
    for f in dataclasses.fields(ModelDims):
        has_default = f.default is not dataclasses.MISSING
        value = get(f.name, f.default) if has_default else get(f.name, None)
        if value is None and not has_default:
            raise ValueError(f"model config is missing '{f.name}', needed for the FLOPs count")
        values[f.name] = value
    return ModelDims(**values)


def _attention_matmul_params(d: ModelDims) -> int:
    qkv = d.hidden_size * (d.num_attention_heads + 2 * d.num_key_value_heads) * d.head_dim
    return qkv + d.num_attention_heads * d.head_dim * d.hidden_size


def _moe_matmul_params(d: ModelDims) -> int:
    routed = 3 * d.hidden_size * d.moe_intermediate_size * d.num_experts_per_tok
    return d.hidden_size * d.num_experts + routed + 3 * d.hidden_size * d.shared_expert_width


def active_matmul_params(cfg: Any) -> dict[str, int]:
    """Matmul weights one token goes through, by part: attention, dense_mlp, moe, lm_head, mtp."""
    d = model_dims(cfg)
    lm_head = d.hidden_size * d.vocab_size
    moe_layers = d.num_hidden_layers - d.num_dense_layers
    moe = moe_layers * _moe_matmul_params(d) if moe_layers else 0
    mtp_layer = 2 * d.hidden_size**2 + _attention_matmul_params(d) + lm_head
    mtp_layer += _moe_matmul_params(d) if d.num_experts else 3 * d.hidden_size * d.intermediate_size
    parts = {
        "attention": d.num_hidden_layers * _attention_matmul_params(d),
        "dense_mlp": d.num_dense_layers * 3 * d.hidden_size * d.intermediate_size,
        "moe": moe,
        "lm_head": lm_head,
        "mtp": d.num_nextn_predict_layers * mtp_layer,
    }
    parts["total"] = sum(parts.values())
    return parts


def training_flops_per_token(cfg: Any, seq_len: int, include_mtp: bool = True) -> float:
    """Training (fwd + bwd) model FLOPs per token at packed length seq_len (module docstring)."""
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be an integer > 0, got {seq_len!r}")
    d = model_dims(cfg)
    params = active_matmul_params(d)
    n_matmul = params["total"] - (0 if include_mtp else params["mtp"])
    attn_layers = d.num_hidden_layers + (d.num_nextn_predict_layers if include_mtp else 0)
    attention = 6 * attn_layers * d.num_attention_heads * d.head_dim * seq_len
    return float(6 * n_matmul + attention)


def training_flops_per_step(cfg: Any, seq_len: int, tokens: int, include_mtp: bool = True) -> float:
    """Model FLOPs of one optimizer step over `tokens` tokens (global batch × seq_len)."""
    return training_flops_per_token(cfg, seq_len, include_mtp) * tokens


def mfu(flops_per_step: float, step_seconds: float, peak_flops_per_device: float, devices: int):
    """Model FLOPs utilisation: flops_per_step / (step_seconds · peak · devices)."""
    if step_seconds <= 0 or peak_flops_per_device <= 0 or devices <= 0:
        raise ValueError("mfu needs step_seconds, peak_flops_per_device and devices > 0")
    return flops_per_step / (step_seconds * peak_flops_per_device * devices)


# Dense bf16 peak FLOP/s per chip, and JAX devices per chip (TPU7x: one device per TensorCore).
# Sources: Cloud TPU docs (v4 275, v5e 197, v5p 459, v6e 918, TPU7x 2307 TFLOP/s); NVIDIA
# datasheets without sparsity (H100/H200 SXM 989, H100 PCIe 756, A100 312 TFLOP/s).
CHIP_PEAK_BF16: dict[str, tuple[float, int]] = {
    "tpu v4": (275e12, 1),
    "tpu v5 lite": (197e12, 1),
    "tpu v5e": (197e12, 1),
    "tpu v5": (459e12, 1),
    "tpu v5p": (459e12, 1),
    "tpu v6 lite": (918e12, 1),
    "tpu v6e": (918e12, 1),
    "tpu7x": (2307e12, 2),
    "tpu v7x": (2307e12, 2),
    "h100 pcie": (756e12, 1),
    "h100": (989e12, 1),
    "h200": (989e12, 1),
    "a100": (312e12, 1),
}


def peak_flops_for_kind(device_kind: str) -> float | None:
    """Dense bf16 peak per JAX device for a `device_kind` string; None if unknown (or CPU)."""
    kind = device_kind.lower().strip()
    if kind in CHIP_PEAK_BF16:
        chip, per_chip = CHIP_PEAK_BF16[kind]
        return chip / per_chip
    # GPU kinds carry extra words ("NVIDIA H100 80GB HBM3"): match the longest known key inside.
    for key in sorted(CHIP_PEAK_BF16, key=len, reverse=True):
        if not key.startswith("tpu") and all(w in kind for w in key.split()):
            chip, per_chip = CHIP_PEAK_BF16[key]
            return chip / per_chip
    return None


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Table peak for `device` (default: the first device); None on CPU or an unknown chip.

    On CPU use `measure_cpu_peak_flops()` instead.
    """
    device = jax.devices()[0] if device is None else device
    if device.platform == "cpu":
        return None
    return peak_flops_for_kind(device.device_kind)


def measure_cpu_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of an n×n×n bf16 matmul with float32 accumulation on the default device.

    Best of 10 (~0.5 s): on a shared 2-core VM the best of 3 varied 357-389 GFLOP/s between runs,
    which moved MFU by three points; a low peak would flatter it.
    """
    if n <= 0 or repeats <= 0:
        raise ValueError("measure_cpu_peak_flops needs n > 0 and repeats > 0")
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.bfloat16)
    b = jax.random.normal(key_b, (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    matmul(a, b).block_until_ready()  # compile and warm up outside the timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best
