"""The `blocked` expert-compute backend: expert-aligned row blocks, batched matmuls, hand-written VJP.

Rows are sorted by expert into blocks of `b` slots (ops.dispatch.block_plan) and every block is
multiplied by its expert's weights in one batched einsum. Autodiff of that form is slow on CPU for
two reasons the custom VJP removes: it saves the gathered [blocks, D, F] weight copies as residuals
(stacked over scanned layers: ~0.5 GB per layer on bench-mini) and it transposes every
token <-> slot gather into a scatter-add. Here the backward re-gathers the weights in the compute
dtype, sums the per-block weight gradients into experts in fp32, and moves rows back with gathers
through the plan's inverse maps. Matmuls take compute-dtype operands with fp32 accumulation.

Two more CPU-specific choices, both exact (same sums, same order):
- The static block count is R/b + E, but only Σ_e ceil(g_e / b) ≈ R/b + E/2 blocks hold rows; the
  rest sit at the end. The first ceil(R/b) blocks are always used; the tail is processed in chunks
  of `TAIL_CHUNK` blocks under `lax.cond`, so empty chunks cost neither matmuls nor weight gathers
  (bench-mini: about a sixth of the routed FLOPs). The per-block weight gradients are summed
  into experts per run (a segment sum for the head, a scatter-add per tail chunk) instead of
  concatenating the runs into [blocks, D, F] fp32 first (~3% of a bench-mini step).
- The weight gradients contract over a block's rows (Xᵀ·dY). XLA:CPU runs that transposed-operand
  batched dot at about half the speed of a plain one, and a standalone transpose is no cheaper, so
  the row-major operands (X, dY) are gathered straight into [D, blocks, b] from their transposes
  (XLA fuses gather and transpose), and dW_down is formed transposed and flipped once per expert.

Measured on bench-mini (2-core CPU, bf16): a whole-model forward+backward went from 7.8 s to 6.7 s
with the custom VJP; the routed layer alone (2,048 tokens, 64 experts, top-8) from ~560-600 ms to
~480-540 ms forward+backward with the two choices above. A regular [E, R/E] tier with looped
overflow blocks was tried and dropped: at initialisation about 40% of rows overflow, and XLA:CPU
copies the loop's update buffers on every iteration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ling_jax.ops import dispatch

# (slot_token, row_slot, block_expert, slot_row, used_blocks) of a BlockPlan.
_Maps = tuple
TAIL_CHUNK = 8  # blocks per conditionally skipped tail chunk


def _mm(eq: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)


def _to_slots(x_TD: jax.Array, index: jax.Array, dtype) -> jax.Array:
    """x[index] with one zero row appended for the padding index len(x)."""
    zero = jnp.zeros((1, x_TD.shape[1]), dtype)
    return jnp.concatenate([x_TD.astype(dtype), zero])[index]


def _to_slots_t(x_TD: jax.Array, index: jax.Array, dtype, block: int) -> jax.Array:
    """The same rows as `_to_slots`, laid out [D, blocks, b] (gathered from xᵀ: no transpose)."""
    zero = jnp.zeros((x_TD.shape[1], 1), dtype)
    src = jnp.concatenate([x_TD.astype(dtype).T, zero], axis=1)
    return jnp.take(src, index, axis=1).reshape(x_TD.shape[1], -1, block)


def _block_runs(num_blocks: int, num_rows: int, b: int) -> list[tuple[int, int]]:
    """(start, stop) of the head that always holds rows (Σ_e ceil(g_e / b) >= ceil(R / b)
    blocks) and of each tail chunk after it."""
    first = -(-num_rows // b)
    tail = [(s, min(s + TAIL_CHUNK, num_blocks)) for s in range(first, num_blocks, TAIL_CHUNK)]
    return [(0, first), *tail]


def _over_blocks(fn: Callable, used: jax.Array, runs: list, arrays: tuple,
                 axes: tuple[int, ...]) -> list:
    """fn on each run of blocks (`axes[i]` is the block axis of arrays[i]); tail runs return zeros
    without computing when they start at or past `used` blocks. One output tree per run."""
    pieces = []
    for start, stop in runs:
        part = tuple(jax.lax.slice_in_dim(a, start, stop, axis=ax)
                     for a, ax in zip(arrays, axes, strict=True))
        if start == 0:
            pieces.append(fn(*part))
            continue
        shapes = jax.eval_shape(fn, *part)
        zeros = lambda *_, shapes=shapes: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        pieces.append(jax.lax.cond(start < used, fn, zeros, *part))
    return pieces


def _concat(pieces: list):
    return jax.tree.map(lambda *p: jnp.concatenate(p) if len(p) > 1 else p[0], *pieces)


def _swiglu_blocks(wg, wu, wd):
    """(gate, up, y) of a run of blocks given their owners; weights in the compute dtype."""
    def fn(xs_NBD, owner_N):
        dtype = xs_NBD.dtype
        gate = _mm("nbd,ndf->nbf", xs_NBD, wg[owner_N]).astype(dtype)
        up = _mm("nbd,ndf->nbf", xs_NBD, wu[owner_N]).astype(dtype)
        y = _mm("nbf,nfd->nbd", jax.nn.silu(gate) * up, wd[owner_N]).astype(dtype)
        return gate, up, y
    return fn


def _combine(y_SD, row_slot, weights_TK) -> tuple[jax.Array, jax.Array]:
    """(Σ_k w_tk · row(t,k) [T,D] fp32, rows [T,K,D] fp32)."""
    num_tokens, top_k = weights_TK.shape
    rows = y_SD[row_slot].reshape(num_tokens, top_k, -1).astype(jnp.float32)
    return jnp.einsum("tkd,tk->td", rows, weights_TK.astype(jnp.float32)), rows


def _forward(dtype, b, x_TD, weights, weights_TK, maps: _Maps):
    slot_token, row_slot, owner, _, used = maps
    xs = _to_slots(x_TD, slot_token, dtype).reshape(-1, b, x_TD.shape[1])
    fn = _swiglu_blocks(*(jnp.asarray(w, dtype) for w in weights))  # NumPy weights too
    runs = _block_runs(xs.shape[0], row_slot.shape[0], b)
    gate, up, y = _concat(_over_blocks(fn, used, runs, (xs, owner), (0, 0)))
    out, _ = _combine(y.reshape(-1, x_TD.shape[1]), row_slot, weights_TK)
    return out, (gate, up, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _routed(dtype, b, x_dtype, x_TD, wg, wu, wd, weights_TK, maps):
    return _forward(dtype, b, x_TD, (wg, wu, wd), weights_TK, maps)[0]


def _routed_fwd(dtype, b, x_dtype, x_TD, wg, wu, wd, weights_TK, maps):
    out, (gate, up, y) = _forward(dtype, b, x_TD, (wg, wu, wd), weights_TK, maps)
    # The slotted inputs are not kept: dW needs them transposed, re-gathered from x_TD.
    return out, (x_TD, gate, up, y, wg, wu, wd, weights_TK, maps)


def _swiglu_block_grads(wg, wu, wd_t):
    """Per-block (dX, dW_gate, dW_up, dW_downᵀ) of a run of blocks; wd_t is [E, D, F]."""
    def fn(gate, up, dy_NBD, owner_N, xs_DNB, dy_DNB):
        dtype = gate.dtype
        g32, u32 = gate.astype(jnp.float32), up.astype(jnp.float32)
        sig = jax.nn.sigmoid(g32)
        act = g32 * sig
        da = _mm("nbd,ndf->nbf", dy_NBD, wd_t[owner_N])
        d_gate = (da * u32 * sig * (1 + g32 * (1 - sig))).astype(dtype)
        d_up = (da * act).astype(dtype)
        dwd_t = _mm("dnb,nbf->ndf", dy_DNB, (act * u32).astype(dtype))
        dwg = _mm("dnb,nbf->ndf", xs_DNB, d_gate)
        dwu = _mm("dnb,nbf->ndf", xs_DNB, d_up)
        dxs = _mm("nbf,ndf->nbd", d_gate, wg[owner_N]) + _mm("nbf,ndf->nbd", d_up, wu[owner_N])
        return dxs.astype(dtype), dwg, dwu, dwd_t
    return fn


def _expert_sum(pieces: list, runs: list, owner: jax.Array, num_experts: int) -> jax.Array:
    """Per-block weight gradients summed into their experts (owners are sorted): one segment sum
    for the head, each tail chunk scattered on top, so no [blocks, D, F] concatenation."""
    head_stop = runs[0][1]
    total = jax.ops.segment_sum(pieces[0], owner[:head_stop], num_experts, indices_are_sorted=True)
    for (start, stop), piece in zip(runs[1:], pieces[1:], strict=True):
        total = total.at[owner[start:stop]].add(piece, indices_are_sorted=True)
    return total


def _routed_bwd(dtype, b, x_dtype, residuals, dy_TD):
    x_TD, gate, up, y, wg, wu, wd, weights_TK, maps = residuals
    slot_token, row_slot, owner, slot_row, used = maps
    num_tokens, top_k = weights_TK.shape
    hidden, num_experts = x_TD.shape[-1], wg.shape[0]
    dy_TD = dy_TD.astype(jnp.float32)
    _, rows = _combine(y.reshape(-1, hidden), row_slot, weights_TK)
    d_weights = jnp.einsum("tkd,td->tk", rows, dy_TD).astype(weights_TK.dtype)
    d_rows = (dy_TD[:, None, :] * weights_TK.astype(jnp.float32)[..., None]).reshape(-1, hidden)
    dy = _to_slots(d_rows, slot_row, dtype).reshape(-1, b, hidden)
    fn = _swiglu_block_grads(jnp.asarray(wg, dtype), jnp.asarray(wu, dtype),
                             jnp.swapaxes(jnp.asarray(wd, dtype), 1, 2))
    arrays = (gate, up, dy, owner, _to_slots_t(x_TD, slot_token, dtype, b),
              _to_slots_t(d_rows, slot_row, dtype, b))
    runs = _block_runs(gate.shape[0], row_slot.shape[0], b)
    pieces = _over_blocks(fn, used, runs, arrays, (0, 0, 0, 0, 1, 1))
    dxs = _concat([p[0] for p in pieces])
    dwg, dwu, dwd_t = (_expert_sum([p[i] for p in pieces], runs, owner, num_experts)
                       for i in (1, 2, 3))
    dx = dxs.reshape(-1, hidden)[row_slot].reshape(num_tokens, top_k, hidden)
    dx = dx.astype(jnp.float32).sum(1).astype(x_dtype)
    return (dx, dwg.astype(wg.dtype), dwu.astype(wu.dtype),
            jnp.swapaxes(dwd_t, 1, 2).astype(wd.dtype), d_weights, (None,) * len(maps))


_routed.defvjp(_routed_fwd, _routed_bwd)


def blocked(x_TD, expert_idx_TK, weights_TK, w, *, dtype, block_size=0):
    """Dropless routed SwiGLU over expert-aligned blocks (see the module docstring); fp32 [T,D]."""
    num_tokens, top_k = expert_idx_TK.shape
    num_experts = w.gate_EDF.shape[0]
    b = dispatch.choose_block_size(num_tokens * top_k, num_experts, block_size)
    plan = dispatch.block_plan(expert_idx_TK, num_experts, b)
    maps = (plan.slot_token, plan.row_slot, plan.block_expert, plan.slot_row, plan.used_blocks)
    return _routed(jnp.dtype(dtype), b, jnp.dtype(x_TD.dtype), x_TD, w.gate_EDF, w.up_EDF,
                   w.down_EFD, weights_TK, maps)
