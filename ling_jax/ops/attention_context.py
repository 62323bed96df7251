"""Context parallelism: one sequence sharded over a mesh axis, load-balanced by zig-zag order.

With C shards the sequence is cut into 2C chunks and shard j holds chunks j and 2C-1-j (the
model permutes its tokens into this order, `sequence_order`; everything but attention is
per-token, and positions travel with the tokens). Causal attention then costs every shard the
same: chunk j sees j+1 chunks of keys, chunk 2C-1-j sees 2C-j, 2C+1 in all. Exchange
`all_gather` gathers K/V (and their segment ids) over the axis inside `shard_map`, restores
natural order and runs the named backend once per local chunk with that chunk's causal offset
(`tiled` skips the key blocks past it; `splash` takes static offsets, so it gets one branch per
shard index); autodiff of all_gather is a reduce-scatter of dK/dV. Exchange `ring` passes K/V
blocks round the axis instead (attention_ring.py), holding one block at a time. The mesh comes
from `jax.set_mesh`, the axis names from `context_settings(...)` (parallel/ sets both); without
them nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ling_jax.ops.attention_mask import AttentionMask
from ling_jax.ops.attention_ring import ring_local_attention

# How K/V reach every shard (mesh field `context_exchange`): all-gathered at once, or passed
# round a ring one block at a time (attention_ring.py; runs the `tiled` kernels).
EXCHANGES = ("all_gather", "ring")
RING_BACKENDS = frozenset({"tiled"})


@dataclasses.dataclass(frozen=True)
class ContextSettings:
    """Which mesh axes shard the sequence, the batch and the heads (as parallel/ rules decided)."""

    axis: str = "context"
    batch_axes: tuple[str, ...] = ()
    head_axes: tuple[str, ...] = ()
    exchange: str = "all_gather"  # how K/V reach every shard: one of EXCHANGES


_SETTINGS: contextvars.ContextVar[ContextSettings | None] = contextvars.ContextVar(
    "context_settings", default=None)


@contextlib.contextmanager
def context_settings(settings: ContextSettings | None) -> Iterator[None]:
    """Shard attention's sequence as `settings` say while tracing inside this block."""
    token = _SETTINGS.set(settings)
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def active() -> tuple[ContextSettings, int] | None:
    """(settings, shards) when a mesh with a context axis of size > 1 is in context, else None."""
    s = _SETTINGS.get()
    if s is None:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or s.axis not in mesh.axis_names or mesh.shape[s.axis] == 1:
        return None
    return s, int(mesh.shape[s.axis])


def zigzag_order(length: int, shards: int) -> np.ndarray:
    """Token indices in zig-zag order: shard j's contiguous slice holds chunks j and 2C-1-j."""
    if length % (2 * shards):
        raise ValueError(f"sequence length {length} is not divisible by 2 × mesh.context "
                         f"({2 * shards}); pick seq_len a multiple of {2 * shards}")
    chunk = length // (2 * shards)
    chunks = [c for j in range(shards) for c in (j, 2 * shards - 1 - j)]
    return np.concatenate([np.arange(c * chunk, (c + 1) * chunk) for c in chunks])


def sequence_order(length: int) -> np.ndarray | None:
    """The order the model runs its tokens in under context parallelism (None: natural order)."""
    hit = active()
    return None if hit is None else zigzag_order(length, hit[1])


def _axes(axes: tuple[str, ...], mesh, size: int) -> tuple[str, ...] | None:
    present = tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)
    if not present or size % math.prod(mesh.shape[a] for a in present):
        return None
    return present


def _local_attention(q, k, v, qseg, kseg, *, backend: Callable, axis: str, shards: int,
                     static_offsets: bool, blocks: dict):
    """Per-device body: gather K/V over the axis, attend each local chunk at its offset."""
    chunk = q.shape[1] // 2
    natural = np.argsort(zigzag_order(2 * chunk * shards, shards))  # gathered -> natural order
    gather = lambda a: jnp.take(jax.lax.all_gather(a, axis, axis=1, tiled=True), natural, axis=1)
    k_all, v_all, kseg_all = gather(k), gather(v), gather(kseg)
    me = jax.lax.axis_index(axis)

    def attend(offsets):
        outs = []
        for half, offset in enumerate(offsets):
            part = slice(half * chunk, (half + 1) * chunk)
            # Static offsets: only the keys up to the chunk's end, so splash's mask tables (built
            # in Python) and grid cover the visible keys only (2C+1 of 4C chunks per shard).
            keys = slice(0, offset + chunk if static_offsets else None)
            mask = AttentionMask(qseg[:, part], kseg_all[:, keys], q_offset=offset)
            outs.append(backend(q[:, part], k_all[:, keys], v_all[:, keys], mask, **blocks))
        return jnp.concatenate(outs, axis=1)

    def offsets_of(j):
        return (j * chunk, (2 * shards - 1 - j) * chunk)

    if static_offsets:  # one branch per shard, each with Python-int offsets
        return jax.lax.switch(me, [functools.partial(attend, offsets_of(j))
                                   for j in range(shards)])
    return attend(offsets_of(me))


def context_parallel_attention(backend: Callable, q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask,
                               *, static_offsets: bool, block_q: int, block_kv: int) -> jax.Array:
    """Attention of zig-zag-ordered, sequence-sharded q/k/v ([B,T,N,H], [B,T,K,H]) → [B,T,N,H]."""
    settings, shards = active()
    if mask.q_offset is not None:
        raise ValueError("context parallelism covers training self-attention only; decode (a "
                         "query offset) with mesh.context=1")
    mesh = jax.sharding.get_abstract_mesh()
    batch, length, num_heads, _ = q_BTNH.shape
    num_kv = k_BSKH.shape[2]
    zigzag_order(length, shards)  # checks divisibility with a clear message
    b = _axes(settings.batch_axes, mesh, batch)
    heads = _axes(settings.head_axes, mesh, math.gcd(num_heads, num_kv))
    seq = P(b, settings.axis)
    qkv = P(b, settings.axis, heads, None)
    blocks = dict(block_q=block_q, block_kv=block_kv)
    if settings.exchange == "ring":
        body = functools.partial(ring_local_attention, axis=settings.axis, shards=shards, **blocks)
    elif settings.exchange == "all_gather":
        body = functools.partial(_local_attention, backend=backend, axis=settings.axis,
                                 shards=shards, static_offsets=static_offsets, blocks=blocks)
    else:
        raise ValueError(f"context exchange {settings.exchange!r} is not one of {EXCHANGES}")
    fn = jax.shard_map(body, mesh=mesh, in_specs=(qkv, qkv, qkv, seq, seq), out_specs=qkv,
                       check_vma=False)
    return fn(q_BTNH, k_BSKH, v_BSKH, mask.q_segment_BT, mask.kv_segment_BS)
