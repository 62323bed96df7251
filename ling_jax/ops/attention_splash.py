"""TPU attention through JAX's Pallas splash attention: causal, GQA, segment ids, fwd + bwd.

The kernel works on one sequence ([N,T,H] queries, [K,S,H] keys), so it is vmapped over the batch.
It does not scale the scores, so q is scaled by 1/√H first. Lengths are padded to the blocks with
segment id -1 (real ids are >= 0), which padded queries alone share. Off TPU the kernel runs in
Pallas interpret mode (tests only), except under `mosaic_lowering()`, for ahead-of-time compiles
for a TPU topology from a CPU host. A query offset must be a Python int (it becomes the static
causal mask's offset; context parallelism passes one per shard); traced ones (cached decode steps)
are not supported.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp

from ling_jax.ops.attention_mask import AttentionMask

_PAD_SEGMENT = -1
_MOSAIC = contextvars.ContextVar("splash_mosaic", default=False)


@contextlib.contextmanager
def mosaic_lowering():
    """Trace the kernel for Mosaic (TPU) even though the host's default backend is not a TPU."""
    token = _MOSAIC.set(True)
    try:
        yield
    finally:
        _MOSAIC.reset(token)


def _interpret() -> bool:
    return not _MOSAIC.get() and jax.default_backend() != "tpu"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad(a: jax.Array, size: int, value=0) -> jax.Array:
    widths = [(0, 0)] * a.ndim
    widths[1] = (0, size - a.shape[1])
    return jnp.pad(a, widths, constant_values=value)


@functools.lru_cache(maxsize=64)
def _kernel(t_pad: int, s_pad: int, offset: int, bq: int, bkv: int, interpret: bool):
    """The splash kernel for one causal mask shape, built once: its block tables are computed in
    Python (seconds per mask at 128K), and a step traces attention several times (layer kinds,
    remat) with 2 × context offsets each, more than splash's own cache (12 masks) holds."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    # A one-head mask, vmapped over heads by the caller: splash builds its tables per head of
    # the mask, while every head here has the same mask.
    causal = splash.CausalMask((t_pad, s_pad), offset=offset)
    blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                               block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                               block_kv_dq=bkv)
    return splash.make_splash_mha(splash.MultiHeadMask([causal]), block_sizes=blocks,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


@functools.partial(jax.named_call, name="attention_splash")
def splash_attention(q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask, *, block_q: int = 512,
                     block_kv: int = 512) -> jax.Array:
    """softmax(QKᵀ/√H masked) V → [B,T,N,H] with the splash kernel (blocks multiples of 128)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    offset = mask.q_offset
    if offset is not None and not isinstance(offset, int):
        raise ValueError("attention_backend 'splash' takes no traced query offset (cached decode); "
                         "decode single tokens with the 'reference' backend")
    batch, length, num_heads, head_dim = q_BTNH.shape
    keys, dtype = k_BSKH.shape[1], v_BSKH.dtype
    bq, bkv = min(block_q, _round_up(length, 128)), min(block_kv, _round_up(keys, 128))
    t_pad, s_pad = _round_up(length, bq), _round_up(keys, bkv)
    q = (q_BTNH.astype(jnp.float32) / math.sqrt(head_dim)).astype(dtype)
    q = _pad(q, t_pad).transpose(0, 2, 1, 3)  # [B,N,T,H]
    k, v = (_pad(a.astype(dtype), s_pad).transpose(0, 2, 1, 3) for a in (k_BSKH, v_BSKH))
    segments = splash.SegmentIds(q=_pad(mask.q_segment_BT, t_pad, _PAD_SEGMENT),
                                 kv=_pad(mask.kv_segment_BS, s_pad, _PAD_SEGMENT))
    kernel = _kernel(t_pad, s_pad, offset or 0, bq, bkv, _interpret())
    one_head = lambda q, k, v, seg: kernel(q[None], k[None], v[None], segment_ids=seg)[0]
    per_group = jax.vmap(one_head, in_axes=(0, None, None, None))  # G query heads share a KV head
    per_kv_head = jax.vmap(per_group, in_axes=(0, 0, 0, None))
    num_kv = k.shape[1]
    q = q.reshape(batch, num_kv, num_heads // num_kv, t_pad, head_dim)
    out = jax.vmap(per_kv_head)(q, k, v, segments).reshape(batch, num_heads, t_pad, head_dim)
    return out.transpose(0, 2, 1, 3)[:, :length].astype(dtype)
