"""Partial rotate-half RoPE and YaRN frequencies against independent NumPy formulas."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.config import get_preset
from ling_jax.model.rotary import apply_rope, rope_cos_sin, rope_frequencies


def _rotate_pairs_numpy(x, pos, inv_freq, scale=1.0):
    """Complex-number form: pair j with j+R/2 and multiply by exp(i·pos·f_j)."""
    rot = 2 * len(inv_freq)
    half = rot // 2
    z = x[..., :half] + 1j * x[..., half:rot]
    phase = np.exp(1j * pos[:, :, None, None] * inv_freq) * scale
    z = z * phase
    return np.concatenate([z.real, z.imag, x[..., rot:] * 1.0], -1)


@pytest.mark.parametrize("head_dim,factor", [(16, 0.5), (32, 0.25), (8, 1.0)])
def test_partial_rope_matches_complex_rotation(head_dim, factor):
    cfg = get_preset("tiny")
    cfg.head_dim, cfg.partial_rotary_factor = head_dim, factor
    inv_freq, scaling = rope_frequencies(cfg)
    assert len(inv_freq) == int(head_dim * factor) // 2 and scaling == 1.0
    np.testing.assert_allclose(
        inv_freq,
        1.0 / cfg.rope_theta ** (np.arange(0, head_dim * factor, 2) / (head_dim * factor)),
        rtol=1e-6,
    )
    rng = np.random.default_rng(head_dim)
    x = rng.normal(size=(2, 9, 3, head_dim)).astype(np.float32)
    pos = rng.integers(0, 500, size=(2, 9))
    cos, sin = rope_cos_sin(jnp.asarray(pos), inv_freq, 1.0, jnp.float32)
    ours = apply_rope(jnp.asarray(x), cos, sin)
    np.testing.assert_allclose(
        ours, _rotate_pairs_numpy(x, pos, inv_freq.astype(np.float64)), atol=2e-4
    )
    # The pass-through dims are untouched.
    rot = int(head_dim * factor)
    np.testing.assert_array_equal(np.asarray(ours)[..., rot:], x[..., rot:])


def _yarn_numpy(dim, base, factor, original, beta_fast=32.0, beta_slow=1.0):
    """YaRN (Peng et al. 2023, §3): NTK-by-parts ramp between interpolation and extrapolation."""

    def dim_for(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(dim_for(beta_fast)), 0), min(math.ceil(dim_for(beta_slow)), dim - 1)
    i = np.arange(dim // 2, dtype=np.float64)
    gamma = np.clip((i - low) / max(high - low, 1e-3), 0, 1)  # 0: extrapolate, 1: interpolate
    theta = base ** (-2 * i / dim)
    inv = theta * (1 - gamma) + theta / factor * gamma
    return inv, 0.1 * math.log(factor) + 1.0


def test_yarn_frequencies_and_attention_scaling():
    cfg = get_preset("ling_mini_2")
    cfg.max_position_embeddings = 131072
    cfg.rope_scaling = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    inv_freq, scaling = rope_frequencies(cfg)
    ref_inv, ref_scale = _yarn_numpy(64, cfg.rope_theta, 4.0, 32768)
    np.testing.assert_allclose(inv_freq, ref_inv, rtol=1e-6)
    assert scaling == pytest.approx(ref_scale)
    # High-frequency dims are kept, the lowest ones interpolated by the factor.
    plain = 1.0 / cfg.rope_theta ** (np.arange(0, 64, 2) / 64)
    assert inv_freq[0] == pytest.approx(plain[0], rel=1e-6)
    assert inv_freq[-1] == pytest.approx(plain[-1] / 4.0, rel=1e-6)
    # cos/sin carry the attention scaling (HF multiplies them by it).
    cos, _ = rope_cos_sin(jnp.zeros((1, 1), jnp.int32), inv_freq, scaling, jnp.float32)
    np.testing.assert_allclose(cos, scaling, rtol=1e-6)
