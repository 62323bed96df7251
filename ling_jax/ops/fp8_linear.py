"""Blockwise FP8 (E4M3) linear layers for training: the Ling 2.0 recipe (TR §5.1, reference §5).

`fp8_matmul(x [..., M, K], w [..., K, N])` is differentiable through a custom_vjp:
    forward   Y  = Q_row(X) · Q_blk(W)        X in [1,128] tiles along K, W in [128,128] blocks
    backward  dX = Q_row(dY) · Q_blk(W)^T     dY in [1,128] tiles along N (the contraction of dX)
              dW = Q_col(X)^T · Q_col(dY)     X, dY in [128,1] tiles along M (the contraction of dW)
Every operand is E4M3 with fp32 scales (E4M3 both ways, no E5M2), accumulation is fp32: the same
recipe as pallas_kernels.fp8_gmm. Residuals are the high-precision X and W (alive anyway); the
backward re-quantises W, whose square blocks serve W^T as they are ("on-demand transpose").

How one scaled GEMM Σ_c q_a[p,c]·s_a[p,c/128] · q_b[c,q]·s_b[c/128,q] is evaluated (`IMPLS`):
  * `fp8_dot`: per 128-deep contraction block an XLA dot on the FP8 codes with f32 results, then
    × row scale × column scale, accumulated in f32 (what an FP8 GEMM with per-tile scales does).
  * `dequant` ("fake quant"): dequantise both operands to f32 (q·s) and run one f32 matmul at
    HIGHEST precision. In exact arithmetic the sums are the same (scales are constant over each
    128-deep block); in f32 they differ only by the rounding of q·s (≤ 2^-24 relative) and the
    summation order, ~10^5 times below the FP8 error (≈ 2^-5), and both match a float64 evaluation
    of the quantised math to ~1e-6. It is the fastest on CPU, where FP8 dots are upcast anyway.
`auto` picks `dequant` on CPU and `fp8_dot` elsewhere.

`fp8_einsum` maps the model's projection einsums onto fp8_matmul; `blocked_fp8` is the `blocked`
expert-compute backend with every expert GEMM in FP8 (the CPU-speed FP8 expert path; `pallas_fp8`
is the kernel path). Embeddings, head, router, norms and MTP eh_proj never come here (§5).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp

from ling_jax.ops import backend_registry, dispatch
from pallas_kernels.quantize import (
    dequantize_cols,
    dequantize_rows,
    quantize_blocks,
    quantize_cols,
    quantize_rows,
)

BLOCK = 128  # [1,128] activation/gradient tiles, [128,128] weight blocks (TR §5.1)
ScaledMatmul = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def _dequant_matmul(a_q, a_s, b_q, b_s) -> jax.Array:
    """a [..., P, C] with scales [..., P, C/128]; b [..., C, Q] with scales [..., C/128, Q]."""
    a = dequantize_rows(a_q, a_s, BLOCK)
    b = dequantize_cols(b_q, b_s, BLOCK)
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _blocks_first(x: jax.Array, axis: int, nb: int) -> jax.Array:
    """Pad `axis` to nb*128, split it into (nb, 128) and move nb to the front."""
    axis = axis % x.ndim
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, nb * BLOCK - x.shape[axis])
    x = jnp.pad(x, pad)
    x = x.reshape(*x.shape[:axis], nb, BLOCK, *x.shape[axis + 1 :])
    return jnp.moveaxis(x, axis, 0)


def _fp8_dot_matmul(a_q, a_s, b_q, b_s) -> jax.Array:
    """Σ over 128-deep blocks of dot(FP8 codes) · row scale · column scale, in f32."""
    nb = a_s.shape[-1]
    a_blocks = _blocks_first(a_q, -1, nb)  # [nb, ..., P, 128]
    b_blocks = _blocks_first(b_q, -2, nb)  # [nb, ..., 128, Q]
    a_scales = jnp.moveaxis(a_s, -1, 0)[..., None]  # [nb, ..., P, 1]
    b_scales = jnp.moveaxis(b_s, -2, 0)[..., None, :]  # [nb, ..., 1, Q]

    def body(acc, blk):
        a, b, sa, sb = blk
        part = jnp.matmul(a, b, preferred_element_type=jnp.float32)  # exact FP8 products
        return acc + part * sa * sb, None

    acc = jnp.zeros((*a_q.shape[:-1], b_q.shape[-1]), jnp.float32)
    return jax.lax.scan(body, acc, (a_blocks, b_blocks, a_scales, b_scales))[0]


IMPLS: dict[str, ScaledMatmul] = {"dequant": _dequant_matmul, "fp8_dot": _fp8_dot_matmul}


def resolve_impl(impl: str) -> str:
    """`auto` → `dequant` on CPU, `fp8_dot` on accelerators; other names are checked."""
    if impl == "auto":
        return "dequant" if jax.default_backend() == "cpu" else "fp8_dot"
    if impl not in IMPLS:
        raise ValueError(f"unknown FP8 matmul impl {impl!r}; choose 'auto' or one of {sorted(IMPLS)}")
    return impl


def _block_scales_along_cols(scale: jax.Array, size: int) -> jax.Array:
    """[..., RB, CB] block scales → [..., RB, size]: one scale per column of each block row."""
    return jnp.repeat(scale, BLOCK, axis=-1)[..., :size]


def _forward(x, w, impl: str) -> jax.Array:
    x_q, x_s = quantize_rows(x, BLOCK)
    w_q, w_s = quantize_blocks(w, (BLOCK, BLOCK))
    return IMPLS[impl](x_q, x_s, w_q, _block_scales_along_cols(w_s, w.shape[-1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fp8_matmul(x, w, impl: str) -> jax.Array:
    return _forward(x, w, impl)


def _fp8_matmul_fwd(x, w, impl: str):
    return _forward(x, w, impl), (x, w)


def _fp8_matmul_bwd(impl: str, residuals, dy):
    x, w = residuals
    mm = IMPLS[impl]
    # dX = dY · W^T: dY tiled along N; W's [128,128] blocks, transposed, are W^T's blocks.
    dy_q, dy_s = quantize_rows(dy, BLOCK)
    w_q, w_s = quantize_blocks(w, (BLOCK, BLOCK))
    w_t_s = _block_scales_along_cols(jnp.swapaxes(w_s, -1, -2), w.shape[-2])
    dx = mm(dy_q, dy_s, jnp.swapaxes(w_q, -1, -2), w_t_s)
    # dW = X^T · dY: both tiled along M, the contraction of this product.
    x_t_q, x_t_s = quantize_rows(jnp.swapaxes(x, -1, -2), BLOCK)
    dy_c_q, dy_c_s = quantize_cols(dy, BLOCK)
    dw = mm(x_t_q, x_t_s, dy_c_q, dy_c_s)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_fp8_matmul.defvjp(_fp8_matmul_fwd, _fp8_matmul_bwd)


def fp8_matmul(x: jax.Array, w: jax.Array, *, impl: str = "auto") -> jax.Array:
    """x [..., M, K] @ w [..., K, N] (same leading dims) in blockwise FP8 → f32 [..., M, N]."""
    if x.ndim < 2 or x.ndim != w.ndim or x.shape[:-2] != w.shape[:-2] or x.shape[-1] != w.shape[-2]:
        raise ValueError(
            f"fp8_matmul wants x [..., M, K] and w [..., K, N] with equal leading dims, "
            f"got {x.shape} and {w.shape}"
        )
    return _fp8_matmul(x, w, resolve_impl(impl))


def parse_projection(equation: str) -> tuple[str, str, str]:
    """(x free, contraction, w free) subscripts of 'x_free+c,c+w_free->x_free+w_free'."""
    try:
        inputs, out = equation.replace(" ", "").split("->")
        x_sub, w_sub = inputs.split(",")
    except ValueError:
        raise ValueError(f"fp8_einsum needs 'x,w->out', got {equation!r}") from None
    contracted = "".join(c for c in x_sub if c in w_sub and c not in out)
    x_free, w_free = x_sub[: len(x_sub) - len(contracted)], w_sub[len(contracted) :]
    if not contracted or x_sub != x_free + contracted or w_sub != contracted + w_free or (
        out != x_free + w_free
    ):
        raise ValueError(
            f"fp8_einsum {equation!r}: x must end and w start with the contracted subscripts "
            "and the output must be x's free subscripts then w's (e.g. 'btd,dnh->btnh')"
        )
    return x_free, contracted, w_free


# A numerics tap (ling_jax.train.fp8_monitor): fn(x [M,K], w [K,N], y [M,N] f32) -> y.
_TAP: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("fp8_linear_tap", default=None)


@contextlib.contextmanager
def tap(fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]) -> Iterator[None]:
    """Every fp8_einsum traced inside calls fn(x_MK, w_KN, y_MN) and returns its result."""
    token = _TAP.set(fn)
    try:
        yield
    finally:
        _TAP.reset(token)


def fp8_einsum(equation: str, x: jax.Array, w: jax.Array, dtype, *, impl: str = "auto") -> jax.Array:
    """A projection einsum (contraction flattened into K) as blockwise FP8; returns `dtype`.

    w keeps its own (master) dtype: it is quantised straight to E4M3 and its gradient comes back
    fp32-accumulated in that dtype, never rounded to `dtype` on the way (as in ops.mixed_einsum)."""
    x_free, contracted, _ = parse_projection(equation)
    lead = x.shape[: len(x_free)]
    k = math.prod(x.shape[len(x_free) :])
    x_MK = x.reshape(-1, k).astype(dtype)
    w_KN = w.reshape(k, -1)
    y_MN = fp8_matmul(x_MK, w_KN, impl=impl)
    hook = _TAP.get()
    if hook is not None:
        y_MN = hook(x_MK, w_KN, y_MN)
    return y_MN.reshape(*lead, *w.shape[len(contracted) :]).astype(dtype)


@backend_registry.register("blocked_fp8")
def blocked_fp8(x_TD, expert_idx_TK, weights_TK, w: backend_registry.ExpertWeights, *, dtype,
                block_size=0):  # fmt: skip
    """`blocked` with each expert GEMM in blockwise FP8 (rows tiled along D/F, [128,128] expert
    blocks; dW tiles run down each block's rows). Same layout and combine as `blocked`."""
    num_tokens, top_k = expert_idx_TK.shape
    num_experts, hidden = w.gate_EDF.shape[0], x_TD.shape[1]
    b = dispatch.choose_block_size(num_tokens * top_k, num_experts, block_size)
    plan = dispatch.block_plan(expert_idx_TK, num_experts, b)
    x_pad = jnp.concatenate([x_TD.astype(dtype), jnp.zeros((1, hidden), dtype)])
    x_NBD = x_pad[plan.slot_token].reshape(-1, b, hidden)
    owner = plan.block_expert

    def mm(a, w_EXY):  # master-dtype weights: each block's dW is not rounded to `dtype`
        return fp8_matmul(a, w_EXY[owner]).astype(dtype)

    h_NBF = jax.nn.silu(mm(x_NBD, w.gate_EDF)) * mm(x_NBD, w.up_EDF)
    y_NBD = mm(h_NBF, w.down_EFD)
    rows = y_NBD.reshape(-1, hidden)[plan.row_slot].reshape(num_tokens, top_k, hidden)
    return jnp.einsum("tkd,tk->td", rows.astype(jnp.float32), weights_TK.astype(jnp.float32))
