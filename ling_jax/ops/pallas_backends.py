"""Pallas grouped-matmul backends for the expert-compute registry: `pallas_fp8` and `megablox`.

Both run Mosaic kernels on TPU and interpret mode elsewhere (slow: for tests, not for speed).
Tiles are clamped to the problem so small test shapes work; on TPU the defaults are 128-aligned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.megablox import gmm as megablox_gmm

from ling_jax.ops.backend_registry import register
from ling_jax.ops.sorted_compute import sorted_backend
from pallas_kernels import fp8_grouped_matmul


def _interpret() -> bool:
    return jax.default_backend() != "tpu"


def _tiling(m: int, k: int, n: int, default=(512, 1024, 1024)) -> tuple[int, int, int]:
    """Tiles no larger than the (128-rounded) problem, so tiny shapes do not pad to 512."""
    def fit(size, tile):
        return min(tile, max(128, -(-size // 128) * 128))
    return fit(m, default[0]), fit(k, default[1]), fit(n, default[2])


def _fp8_gmm(lhs, rhs, sizes):
    tiling = _tiling(lhs.shape[0], lhs.shape[1], rhs.shape[2], (256, 512, 512))
    return fp8_grouped_matmul(lhs, rhs, sizes, tiling=tiling, out_dtype=jnp.float32,
                              interpret=_interpret())


def _megablox_gmm(lhs, rhs, sizes):
    m, k, n = lhs.shape[0], lhs.shape[1], rhs.shape[2]
    pad = -m % 128  # megablox wants m to be a multiple of its m tile
    lhs_padded = jnp.pad(lhs, ((0, pad), (0, 0)))
    out = megablox_gmm(lhs_padded, rhs, sizes, preferred_element_type=jnp.float32,
                       tiling=_tiling(m + pad, k, n, (512, 1024, 1024)), interpret=_interpret())
    return out[:m]


register("pallas_fp8")(sorted_backend(_fp8_gmm))
register("megablox")(sorted_backend(_megablox_gmm))
