"""Expert parallelism: tokens travel to the devices that own their experts, inside `shard_map`.

Registered expert-compute backends (same signature as every backend in `expert_compute`):
  ep_all_to_all         fixed-capacity `all_to_all` (runs everywhere, XLA:CPU included)
  ep_ragged_all_to_all  `lax.ragged_all_to_all` (TPU/GPU; XLA:CPU cannot execute it, so it is
                        checked by ahead-of-time compilation for a TPU topology)
Per device, with T local tokens, K slots, n devices on the expert axis and E/n local experts:
  route: destination device and rank of every (token, slot) row → send (transport) →
  local grouped compute on the received rows (the `local_backend`, e.g. `blocked`) →
  return (transport) → weighted combine at the source → psum over the axes sharding the mlp dim.
Capacity (rows per source→destination pair) is T·min(K, E/n) by default: no token is ever
dropped. A `capacity_factor` c > 0 sizes it ⌈c·T·K/n⌉ instead; rows past it are dropped (their
output is zero) and counted: `expert_compute.compute_with_drops(name)` returns that count too.
Without a mesh in context, or with an expert axis of size 1, the backends run `local_backend`
directly, so a model configured for EP also runs on one device.
The mesh comes from `jax.set_mesh`; the axis names from `ep_settings(...)` (parallel/ sets both).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ling_jax.ops import backend_registry
from ling_jax.ops.backend_registry import ExpertWeights


@dataclasses.dataclass(frozen=True)
class EPSettings:
    """Which mesh axes shard what, as the parallel/ rules decided."""

    token_axes: tuple[str, ...] = ("data", "fsdp", "expert")  # axes sharding the token dim
    expert_axis: str = "expert"
    mlp_axes: tuple[str, ...] = ("tensor",)  # axes sharding the expert hidden (mlp) dim
    capacity_factor: float = 0.0  # 0: dropless
    local_backend: str = "blocked"
    # Set by the vmapped pipeline stages, where batched ragged ops do not lower (ragged_all_to_all
    # has no batching rule; TPU's ragged_dot takes no batched group sizes): the ragged transport
    # becomes the fixed-capacity all_to_all (same routing and drops), ragged_dot becomes blocked.
    under_vmap: bool = False


_SETTINGS: contextvars.ContextVar[EPSettings | None] = contextvars.ContextVar(
    "ep_settings", default=None
)


@contextlib.contextmanager
def ep_settings(settings: EPSettings) -> Iterator[EPSettings]:
    """Use `settings` for EP backends traced inside this block."""
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)


def current_settings() -> EPSettings:
    return _SETTINGS.get() or EPSettings()


def capacity(tokens: int, top_k: int, n_ep: int, local_experts: int, factor: float) -> int:
    """Rows one source may send one destination: dropless worst case, or ⌈factor·T·K/n⌉."""
    worst = tokens * min(top_k, local_experts)
    if factor <= 0:
        return worst
    return max(1, min(worst, math.ceil(factor * tokens * top_k / n_ep)))


class Route(NamedTuple):
    dest_R: jax.Array  # destination device of each flat (token, slot) row
    rank_R: jax.Array  # its position among the rows this device sends to that destination
    keep_R: jax.Array  # rank < capacity
    sizes_N: jax.Array  # rows per destination (before capacity)
    capacity: int


def route_rows(dest_R: jax.Array, n_ep: int, cap: int) -> Route:
    """Stable rank of each row within its destination (rows keep (token, slot) order)."""
    order = jnp.argsort(dest_R, stable=True)
    sizes = jnp.bincount(dest_R, length=n_ep).astype(jnp.int32)
    starts = jnp.cumsum(sizes) - sizes
    rank_sorted = jnp.arange(dest_R.shape[0], dtype=jnp.int32) - starts[dest_R[order]]
    rank = jnp.zeros_like(rank_sorted).at[order].set(rank_sorted)
    return Route(dest_R, rank, rank < cap, sizes, cap)


# Transports: send(route, rows [R, ...], fill, axis) -> receive buffer [n*C, ...], region s
# holding what source s sent; back(route, y [n*C, D], axis) -> rows [R, D] at the source
# in (token, slot) order, zero where dropped.


def _a2a_slot(route: Route, n_ep: int) -> jax.Array:
    return jnp.where(route.keep_R, route.dest_R * route.capacity + route.rank_R, n_ep * route.capacity)


def _a2a_send(route: Route, rows, fill, axis: str, n_ep: int):
    cap = route.capacity
    buf = jnp.full((n_ep * cap + 1, *rows.shape[1:]), fill, rows.dtype)
    buf = buf.at[_a2a_slot(route, n_ep)].set(rows)[:-1]
    got = jax.lax.all_to_all(buf.reshape(n_ep, cap, *rows.shape[1:]), axis, 0, 0, tiled=True)
    return got.reshape(n_ep * cap, *rows.shape[1:])


def _a2a_back(route: Route, y, axis: str, n_ep: int):
    cap, hidden = route.capacity, y.shape[-1]
    back = jax.lax.all_to_all(y.reshape(n_ep, cap, hidden), axis, 0, 0, tiled=True)
    back = jnp.concatenate([back.reshape(n_ep * cap, hidden), jnp.zeros((1, hidden), y.dtype)])
    return back[_a2a_slot(route, n_ep)]


def ragged_all_to_all_emulated(operand, output, input_offsets, send_sizes, output_offsets,
                               recv_sizes, *, axis_name):
    """`lax.ragged_all_to_all` semantics from dense all_to_all (CPU tests of the ragged path)."""
    n_ep, rows = send_sizes.shape[0], operand.shape[0]
    ar = jnp.arange(rows, dtype=jnp.int32)
    idx = jnp.clip(input_offsets[:, None] + ar[None], 0, rows - 1)
    valid = ar[None] < send_sizes[:, None]
    chunks = jnp.where(valid.reshape(*valid.shape, *([1] * (operand.ndim - 1))), operand[idx], 0)
    got = jax.lax.all_to_all(chunks.astype(operand.dtype), axis_name, 0, 0, tiled=True)
    where = jax.lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)
    pos = jnp.where(ar[None] < recv_sizes[:, None], where[:, None] + ar[None], output.shape[0])
    return output.at[pos.reshape(-1)].set(got.reshape(n_ep * rows, *operand.shape[1:]),
                                          mode="drop")


def _ragged_offsets(route: Route, n_ep: int):
    starts = jnp.cumsum(route.sizes_N) - route.sizes_N
    kept = jnp.minimum(route.sizes_N, route.capacity)
    pos = starts[route.dest_R] + route.rank_R  # sorted position of each row at the source
    return starts.astype(jnp.int32), kept.astype(jnp.int32), pos.astype(jnp.int32)


def _ragged_send(route: Route, rows, fill, axis: str, n_ep: int, fn: Callable):
    starts, kept, pos = _ragged_offsets(route, n_ep)
    operand = jnp.zeros_like(rows).at[pos].set(rows)
    me = jax.lax.axis_index(axis)
    out_offsets = jnp.full((n_ep,), me * route.capacity, jnp.int32)
    recv = jax.lax.all_to_all(kept, axis, 0, 0, tiled=True)
    output = jnp.full((n_ep * route.capacity, *rows.shape[1:]), fill, rows.dtype)
    return fn(operand, output, starts, kept, out_offsets, recv, axis_name=axis)


def _ragged_back(route: Route, y, axis: str, n_ep: int, fn: Callable):
    starts, kept, pos = _ragged_offsets(route, n_ep)
    recv = jax.lax.all_to_all(kept, axis, 0, 0, tiled=True)
    src_starts = jax.lax.all_to_all(starts, axis, 0, 0, tiled=True)
    regions = jnp.arange(n_ep, dtype=jnp.int32) * route.capacity
    out = jnp.zeros((route.dest_R.shape[0], y.shape[-1]), y.dtype)
    back = fn(y, out, regions, recv, src_starts, kept, axis_name=axis)
    return jnp.where(route.keep_R[:, None], back[pos], 0)


class Transport(NamedTuple):
    send: Callable
    back: Callable


TRANSPORTS: dict[str, Transport] = {
    "all_to_all": Transport(_a2a_send, _a2a_back),
    "ragged_all_to_all": Transport(
        functools.partial(_ragged_send, fn=jax.lax.ragged_all_to_all),
        functools.partial(_ragged_back, fn=jax.lax.ragged_all_to_all)),
    "ragged_emulated": Transport(
        functools.partial(_ragged_send, fn=ragged_all_to_all_emulated),
        functools.partial(_ragged_back, fn=ragged_all_to_all_emulated)),
}


def _local_compute(x_RD, ids_R, valid_R, w: ExpertWeights, s: EPSettings, dtype, block_size):
    """One output row per received row (invalid rows: expert 0 with weight 0, i.e. zero)."""
    compute = backend_registry.get(s.local_backend)
    ids = jnp.where(valid_R, ids_R, 0)[:, None]
    return compute(x_RD, ids, valid_R.astype(jnp.float32)[:, None], w, dtype=dtype,
                   block_size=block_size)


def _dispatch_local(x_TD, idx_TK, w_TK, gate, up, down, *, s: EPSettings, transport: Transport,
                    n_ep: int, dtype, block_size: int, reduce_axes: tuple[str, ...]):
    """Per-device body of the all-to-all path (inside shard_map)."""
    num_tokens, top_k = idx_TK.shape
    local = gate.shape[0]
    cap = capacity(num_tokens, top_k, n_ep, local, s.capacity_factor)
    route = route_rows((idx_TK // local).reshape(-1), n_ep, cap)
    rows = jnp.repeat(x_TD.astype(dtype), top_k, axis=0)  # row r = token r // K
    x_buf = transport.send(route, rows, 0, s.expert_axis, n_ep)
    ids_buf = transport.send(route, (idx_TK % local).reshape(-1), local, s.expert_axis, n_ep)
    y_buf = _local_compute(x_buf, ids_buf, ids_buf < local, ExpertWeights(gate, up, down), s,
                           dtype, block_size).astype(dtype)
    y_RD = transport.back(route, y_buf, s.expert_axis, n_ep)
    y_TD = jnp.einsum("tkd,tk->td", y_RD.reshape(num_tokens, top_k, -1).astype(jnp.float32),
                      w_TK.astype(jnp.float32))
    if reduce_axes:
        y_TD = jax.lax.psum(y_TD, reduce_axes)
    dropped = jax.lax.psum(jnp.sum(~route.keep_R).astype(jnp.int32), s.token_axes)
    return y_TD, dropped


def _replicated_local(x_TD, idx_TK, w_TK, gate, up, down, *, s: EPSettings, dtype,
                      block_size: int, reduce_axes: tuple[str, ...]):
    """Tokens replicated over the expert axis: compute local experts only, then psum."""
    local = gate.shape[0]
    mine = idx_TK // local == jax.lax.axis_index(s.expert_axis)
    compute = backend_registry.get(s.local_backend)
    y_TD = compute(x_TD, jnp.where(mine, idx_TK % local, 0), jnp.where(mine, w_TK, 0.0),
                   ExpertWeights(gate, up, down), dtype=dtype, block_size=block_size)
    return jax.lax.psum(y_TD, (s.expert_axis, *reduce_axes)), jnp.zeros((), jnp.int32)


def _present(axes: tuple[str, ...], mesh) -> tuple[str, ...]:
    return tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)


def ep_expert_compute(x_TD, expert_idx_TK, weights_TK, w: ExpertWeights, *, dtype,
                      block_size: int = 0, transport: str = "all_to_all",
                      settings: EPSettings | None = None) -> tuple[jax.Array, jax.Array]:
    """Routed output [T, D] fp32 and the number of dropped (token, slot) rows (int32 scalar)."""
    s = settings or current_settings()
    if s.under_vmap:
        transport = "all_to_all" if transport == "ragged_all_to_all" else transport
        if s.local_backend == "ragged_dot":
            s = dataclasses.replace(s, local_backend="blocked")
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or s.expert_axis not in mesh.axis_names or mesh.shape[s.expert_axis] == 1:
        y = backend_registry.get(s.local_backend)(x_TD, expert_idx_TK, weights_TK, w, dtype=dtype,
                                                block_size=block_size)
        return y, jnp.zeros((), jnp.int32)
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown EP transport {transport!r}; choose one of {sorted(TRANSPORTS)}")
    n_ep, num_experts = mesh.shape[s.expert_axis], w.gate_EDF.shape[0]
    if num_experts % n_ep:
        raise ValueError(f"num_experts={num_experts} is not divisible by the expert mesh axis "
                         f"({n_ep}); change mesh.expert")
    tok = _present(s.token_axes, mesh)
    mlp = _present(s.mlp_axes, mesh)
    if mlp and w.gate_EDF.shape[2] % math.prod(mesh.shape[a] for a in mlp):
        mlp = ()
    tok_spec = P(tok or None, None)
    mlp_spec = mlp or None
    kw = dict(s=dataclasses.replace(s, token_axes=tok), dtype=dtype, block_size=block_size,
              reduce_axes=mlp)
    if s.expert_axis in tok:
        body = functools.partial(_dispatch_local, transport=TRANSPORTS[transport], n_ep=n_ep, **kw)
    else:
        body = functools.partial(_replicated_local, **kw)
    ex = s.expert_axis
    fn = jax.shard_map(
        body, mesh=mesh,
        in_specs=(tok_spec, tok_spec, tok_spec, P(ex, None, mlp_spec), P(ex, None, mlp_spec),
                  P(ex, mlp_spec, None)),
        out_specs=(tok_spec, P()),
        check_vma=False)  # outputs are psum'd as specified; the check trips under a vmapped pipeline
    return fn(x_TD, expert_idx_TK, weights_TK, w.gate_EDF, w.up_EDF, w.down_EFD)


# The registered EP backends and the transport each one uses.
EP_BACKENDS: dict[str, str] = {"ep_all_to_all": "all_to_all",
                               "ep_ragged_all_to_all": "ragged_all_to_all"}


def _backend(transport: str) -> backend_registry.Backend:
    def run(x_TD, expert_idx_TK, weights_TK, w: ExpertWeights, *, dtype, block_size=0):
        return ep_expert_compute(x_TD, expert_idx_TK, weights_TK, w, dtype=dtype,
                                 block_size=block_size, transport=transport)[0]

    return run


for _name, _transport in EP_BACKENDS.items():
    backend_registry.register(_name)(_backend(_transport))
