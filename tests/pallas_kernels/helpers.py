"""Shared tolerances and random-data builders for the pallas_kernels tests."""

from __future__ import annotations

import numpy as np

# The kernel against float64 evaluation of the *same* quantised math: only f32 accumulation
# (128-term MXU partial sums, per-block scaling) separates them.
TIGHT_RTOL = 1e-5
# FP8 against the unquantised product. E4M3 round-to-nearest has a relative RMS error of
# 2^-4/sqrt(3) * sqrt(E[1/M^2]) ~= 0.0265 per operand (mantissa M log-uniform in [1, 2)), so a
# product of two quantised operands sits at ~0.0375 on random data; 3e-2 is below that floor.
FP8_RTOL = 4.5e-2
# ...and a lower bound, proving the FP8 path really quantises both operands.
FP8_MIN_ERR = 2e-2


def rel_err(actual, expected) -> float:
    """Relative Frobenius error ||a - e|| / ||e|| in float64."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


def random_operands(seed: int, m: int, k: int, n: int, g: int, w_scale: float = 0.05):
    """Random normal x [m, k] and w [g, k, n] (f32) with per-row/per-group magnitude spread."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)) * rng.uniform(0.1, 3.0, (m, 1))
    w = rng.standard_normal((g, k, n)) * w_scale * rng.uniform(0.5, 2.0, (g, 1, 1))
    return x.astype(np.float32), w.astype(np.float32)


def random_cotangent(seed: int, m: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    return (rng.standard_normal((m, n)) * rng.uniform(0.01, 1.0, (m, 1))).astype(np.float32)
