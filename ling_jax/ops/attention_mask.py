"""What attention may see, in O(T) memory: segment ids of queries and keys plus a causal offset.

Key s is visible to query t iff  s <= q_offset + t  (causal by buffer index)  and
q_segment[b, t] == kv_segment[b, s]  (same packed document; segment 0 is padding, which only sees
padding). Training self-attention has q_offset = 0 and q_segment = kv_segment; cached decoding
writes its queries at buffer index q_offset. Backends build what they need from this: the
reference a dense [B,1,T,S] mask, `tiled` one block at a time, `splash` its SegmentIds.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AttentionMask(NamedTuple):
    q_segment_BT: jax.Array  # int32
    kv_segment_BS: jax.Array  # int32
    q_offset: jax.Array | None = None  # scalar int: buffer index of query 0; None means 0

    @property
    def offset(self) -> jax.Array | int:
        return 0 if self.q_offset is None else self.q_offset


def self_attention_mask(segment_ids_BT: jax.Array | None, batch: int, length: int) -> AttentionMask:
    """Causal self-attention within packed documents (all one document when segment_ids is None)."""
    if segment_ids_BT is None:
        segment_ids_BT = jnp.ones((batch, length), jnp.int32)
    segment_ids_BT = segment_ids_BT.astype(jnp.int32)
    return AttentionMask(segment_ids_BT, segment_ids_BT)


def visible(mask: AttentionMask, q_index_T: jax.Array, k_index_S: jax.Array,
            q_segment_BT: jax.Array, kv_segment_BS: jax.Array) -> jax.Array:
    """[B, T, S] bool for the given query/key buffer indices and their segment ids."""
    causal = k_index_S[None, :] <= (mask.offset + q_index_T)[:, None]
    return causal[None] & (q_segment_BT[:, :, None] == kv_segment_BS[:, None, :])


def dense_mask(mask: AttentionMask) -> jax.Array:
    """The full [B, 1, T, S] bool mask (T×S memory: the reference backend only)."""
    length, keys = mask.q_segment_BT.shape[1], mask.kv_segment_BS.shape[1]
    return visible(mask, jnp.arange(length), jnp.arange(keys), mask.q_segment_BT,
                   mask.kv_segment_BS)[:, None]
