"""Pallas FP8 kernels for fine-grained MoE expert compute (Ling 2.0 blockwise recipe).

Modules: `quantize` (blockwise E4M3 quantisers), `schedule` (group visit metadata), `gmm` and
`tgmm` (the Mosaic kernels), `fp8_gmm` (the differentiable custom_vjp), `reference` (NumPy
float64 and unquantised JAX references). Imports nothing from ling_jax.
"""

from pallas_kernels.fp8_gmm import fp8_grouped_matmul
from pallas_kernels.gmm import DEFAULT_TILING, gmm
from pallas_kernels.quantize import (
    dequantize_blocks,
    dequantize_cols,
    dequantize_rows,
    quantize_blocks,
    quantize_cols,
    quantize_rows,
)
from pallas_kernels.tgmm import tgmm

__all__ = [
    "DEFAULT_TILING",
    "dequantize_blocks",
    "dequantize_cols",
    "dequantize_rows",
    "fp8_grouped_matmul",
    "gmm",
    "quantize_blocks",
    "quantize_cols",
    "quantize_rows",
    "tgmm",
]
