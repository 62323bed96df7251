"""Blockwise E4M3 quantisers against the float64 NumPy reference, saturation and pow2 scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import quantize as qz
from pallas_kernels import reference as ref


def _random(seed: int, shape, spread: float = 4.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mag = 10.0 ** rng.uniform(-spread, spread, shape[:-1] + (1,))
    return (rng.standard_normal(shape) * mag).astype(np.float32)


def _codes(q) -> np.ndarray:
    return np.asarray(q).astype(np.float64)


@pytest.mark.parametrize("pow2", [False, True])
@pytest.mark.parametrize("shape", [(6, 384), (5, 300)])
def test_quantize_rows_matches_numpy_bitwise(shape, pow2):
    x = _random(0, shape)
    q, s = qz.quantize_rows(jnp.asarray(x), pow2_scale=pow2)
    q_ref, s_ref = ref.np_quantize_rows(x, pow2)
    assert q.dtype == jnp.float8_e4m3fn and q.shape == shape
    assert s.dtype == jnp.float32 and s.shape == (shape[0], -(-shape[1] // 128))
    np.testing.assert_array_equal(np.asarray(s), s_ref)
    np.testing.assert_array_equal(_codes(q), q_ref)


@pytest.mark.parametrize("pow2", [False, True])
def test_quantize_cols_is_rows_of_the_transpose(pow2):
    x = _random(1, (7, 300)).T  # [300, 7]: tiles of 128 rows, the last one partial
    q, s = qz.quantize_cols(jnp.asarray(x), pow2_scale=pow2)
    q_ref, s_ref = ref.np_quantize_cols(x, pow2)
    assert s.shape == (3, 7)
    np.testing.assert_array_equal(np.asarray(s), s_ref)
    np.testing.assert_array_equal(_codes(q), q_ref)


@pytest.mark.parametrize("pow2", [False, True])
def test_quantize_blocks_matches_numpy_bitwise(pow2):
    w = _random(2, (3, 260, 200))
    q, s = qz.quantize_blocks(jnp.asarray(w), pow2_scale=pow2)
    q_ref, s_ref = ref.np_quantize_blocks(w, pow2)
    assert q.shape == w.shape and s.shape == (3, 3, 2)
    np.testing.assert_array_equal(np.asarray(s), s_ref)
    np.testing.assert_array_equal(_codes(q), q_ref)


def test_dequantize_round_trip_error_is_fp8_sized():
    x = _random(3, (64, 512), spread=1.0)
    for quant, dequant in [
        (qz.quantize_rows, qz.dequantize_rows),
        (qz.quantize_cols, qz.dequantize_cols),
        (qz.quantize_blocks, qz.dequantize_blocks),
    ]:
        xr = np.asarray(dequant(*quant(jnp.asarray(x))))
        rel = np.abs(xr - x) / np.abs(x)
        # Normal E4M3 values are within half an ulp (2^-4 relative) of the input.
        big = np.abs(x) > 1e-2 * np.abs(x).max(axis=1, keepdims=True)
        assert rel[big].max() <= 2.0**-4 + 1e-7, quant.__name__


def test_tile_maximum_maps_to_448_and_zero_tiles_stay_finite():
    x = _random(4, (8, 256))
    x[3, :128] = 0.0  # an all-zero tile
    q, s = qz.quantize_rows(jnp.asarray(x))
    codes = _codes(q).reshape(8, 2, 128)
    amax_codes = np.abs(codes).max(axis=-1)
    assert amax_codes[3, 0] == 0 and np.all(np.isfinite(np.asarray(s)))
    np.testing.assert_array_equal(np.delete(amax_codes.ravel(), 6), 448.0)


def test_saturation_never_produces_nan():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    x[0, :3] = [3.0e38, -3.0e38, 1.0e30]  # near the fp32 limit
    x[1, 5] = 1e20  # one outlier dwarfs its tile
    for pow2 in (False, True):
        q, s = qz.quantize_rows(jnp.asarray(x), pow2_scale=pow2)
        codes = _codes(q)
        assert not np.isnan(codes).any() and np.abs(codes).max() <= 448.0
        assert np.all(np.isfinite(np.asarray(s)))
    # Beyond 448 * scale the cast must saturate to +-448 (a plain XLA cast gives NaN).
    over = jnp.asarray([500.0, -1e6, 449.0, 1e30], jnp.float32)
    assert np.isnan(np.asarray(over.astype(jnp.float8_e4m3fn)).astype(np.float32)).any()
    np.testing.assert_array_equal(
        np.asarray(qz.saturating_cast(over)).astype(np.float32), [448, -448, 448, 448]
    )


def test_pow2_scales_are_powers_of_two_and_cover_the_tile():
    x = _random(6, (16, 384))
    x[0, :128] = 448.0 * 2.0**-7  # amax / 448 exactly a power of two: must stay as is
    q, s = qz.quantize_rows(jnp.asarray(x), pow2_scale=True)
    s = np.asarray(s, np.float64)
    mantissa, _ = np.frexp(s)
    np.testing.assert_array_equal(mantissa, 0.5)
    assert s[0, 0] == 2.0**-7
    amax = np.abs(x.astype(np.float64)).reshape(16, 3, 128).max(-1)
    assert np.all(s * 448.0 >= amax) and np.all(s * 448.0 < 2.0 * amax * (1 + 1e-6))
    codes = np.abs(_codes(q)).reshape(16, 3, 128).max(-1)
    assert np.all(codes >= 224.0) and np.all(codes <= 448.0)  # amax lands in [224, 448]


def test_quantize_is_jittable_and_rejects_bad_blocks():
    x = jnp.asarray(_random(7, (4, 256)))
    q, _ = jax.jit(qz.quantize_rows)(x)
    assert q.dtype == jnp.float8_e4m3fn
    with pytest.raises(ValueError, match="block"):
        qz.quantize_rows(x, block=0)
    with pytest.raises(ValueError, match="rank"):
        qz.quantize_blocks(jnp.ones((4,)))
