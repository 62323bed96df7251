"""float64 NumPy references of FP8 expert compute, shared by the FP8 expert-backend tests."""

from __future__ import annotations

import numpy as np

from pallas_kernels import reference as ref


def np_fp8_rows(a: np.ndarray) -> np.ndarray:
    """a quantised in [1,128] tiles along its last axis and dequantised (float64)."""
    return ref.np_dequantize_rows(*ref.np_quantize_rows(a))


def np_fp8_blocks(w: np.ndarray) -> np.ndarray:
    """w quantised in [128,128] blocks and dequantised (float64)."""
    return ref.np_dequantize_blocks(*ref.np_quantize_blocks(w))


def np_fp8_moe(x, expert_idx, combine, weights) -> np.ndarray:
    """Σ_k w_tk · Q(silu(Q(x)Q(Wg)) ⊙ Q(x)Q(Wu)) · Q(Wd), every GEMM operand FP8 (forward recipe)."""
    gate, up, down = (np.asarray(a, np.float64) for a in weights)
    x_q = np_fp8_rows(x)  # rows are quantised independently: the dispatch layout cannot matter
    out = np.zeros(x.shape, np.float64)
    for e in range(gate.shape[0]):
        tokens, slots = np.nonzero(expert_idx == e)
        if tokens.size == 0:
            continue
        h = x_q[tokens] @ np_fp8_blocks(gate[e])
        a = h / (1.0 + np.exp(-h)) * (x_q[tokens] @ np_fp8_blocks(up[e]))
        y = np_fp8_rows(a) @ np_fp8_blocks(down[e])
        np.add.at(out, tokens, combine[tokens, slots][:, None] * y)
    return out


def np_moe(x, expert_idx, combine, weights) -> np.ndarray:
    """The unquantised routed SwiGLU in float64."""
    gate, up, down = (np.asarray(a, np.float64) for a in weights)
    out = np.zeros(x.shape, np.float64)
    for e in range(gate.shape[0]):
        tokens, slots = np.nonzero(expert_idx == e)
        h = x[tokens] @ gate[e]
        y = (h / (1.0 + np.exp(-h)) * (x[tokens] @ up[e])) @ down[e]
        np.add.at(out, tokens, combine[tokens, slots][:, None] * y)
    return out


def random_moe_problem(seed: int, tokens: int, hidden: int, width: int, experts: int, top_k: int,
                       skew: bool = False):
    """x [T,D] with per-row magnitude spread, distinct experts per token, combine weights, weights.

    skew=True (top_k 2): every token on expert 0, second choice 1 or 2, experts 3.. empty."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((tokens, hidden)) * rng.uniform(0.3, 2.0, (tokens, 1))).astype(np.float32)
    if skew:
        idx = np.stack([np.zeros(tokens, int), rng.integers(1, 3, tokens)], 1).astype(np.int32)
    else:
        idx = np.stack([rng.permutation(experts)[:top_k] for _ in range(tokens)]).astype(np.int32)
    combine = rng.uniform(0.1, 1.0, (tokens, top_k)).astype(np.float32)
    shapes = [(experts, hidden, width), (experts, hidden, width), (experts, width, hidden)]
    weights = tuple((rng.standard_normal(s) * 0.1).astype(np.float32) for s in shapes)
    return x, idx, combine, weights
