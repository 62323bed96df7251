"""Partial rotate-half RoPE with optional YaRN scaling, following the HF RoPE init (reference §2.4)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rot_dim: int, theta: float, max_pos: int, scaling: dict) -> tuple[np.ndarray, float]:
    """YaRN inverse frequencies and attention scaling, as transformers' `_compute_yarn_parameters`."""
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings")
    if original:
        # HF derives the factor from the two context lengths when the original one is given.
        factor = max_pos / float(original)
    else:
        original = max_pos
    attention = scaling.get("attention_factor")
    if attention is None:
        ms, ms_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = (
            _yarn_mscale(factor, ms) / _yarn_mscale(factor, ms_all)
            if ms and ms_all
            else _yarn_mscale(factor)
        )
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return rot_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), rot_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(rot_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation_weight = 1.0 - ramp
    pos_freqs = theta ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (
        1.0 / pos_freqs
    ) * extrapolation_weight
    return inv_freq.astype(np.float32), float(attention)


def rope_frequencies(cfg) -> tuple[np.ndarray, float]:
    """(inv_freq [rot_dim/2] float32, attention_scaling) for a model config."""
    rot_dim = int(round(cfg.head_dim * cfg.partial_rotary_factor))
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "yarn":
        return _yarn(rot_dim, float(cfg.rope_theta), int(cfg.max_position_embeddings), scaling)
    # float32 exponent, as torch computes arange(0, dim, 2).float() / dim.
    exponents = np.arange(0, rot_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rot_dim)
    return (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32), 1.0


def rope_cos_sin(
    positions: jax.Array, inv_freq: np.ndarray, attention_scaling: float, dtype
) -> tuple[jax.Array, jax.Array]:
    """cos/sin [..., T, rot_dim] in fp32, scaled, then cast to the activation dtype."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return (
        (jnp.cos(emb) * attention_scaling).astype(dtype),
        (jnp.sin(emb) * attention_scaling).astype(dtype),
    )


def apply_rope(x_BTNH: jax.Array, cos_BTR: jax.Array, sin_BTR: jax.Array) -> jax.Array:
    """Rotate the first R dims of each head (rotate_half pairing j <-> j+R/2); the rest pass."""
    rot = cos_BTR.shape[-1]
    x_rot, x_pass = x_BTNH[..., :rot], x_BTNH[..., rot:]
    half = rot // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    cos, sin = cos_BTR[:, :, None, :], sin_BTR[:, :, None, :]
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)
