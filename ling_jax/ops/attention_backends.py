"""The table of attention backends: imports each implementation and registers it by name.

`reference` (attention_core, the test reference: builds the [B,1,T,S] mask), `tiled` (flash-style,
memory linear in T; CPU/GPU) and `splash` (Pallas splash attention; TPU). Under a mesh with a context
axis, `attend` runs the backend inside context-parallel attention (ops/attention_context.py).
"""

from __future__ import annotations

import jax

from ling_jax.ops import attention_registry as registry
from ling_jax.ops.attention_context import RING_BACKENDS, active, context_parallel_attention
from ling_jax.ops.attention_core import dot_product_attention
from ling_jax.ops.attention_mask import AttentionMask, dense_mask
from ling_jax.ops.attention_splash import splash_attention
from ling_jax.ops.attention_tiled import tiled_attention


@registry.register("reference")
def reference_attention(q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask, *, block_q: int = 0,
                        block_kv: int = 0) -> jax.Array:
    del block_q, block_kv  # untiled
    return dot_product_attention(q_BTNH, k_BSKH, v_BSKH, dense_mask(mask))


registry.register("tiled")(tiled_attention)
registry.register("splash")(splash_attention)

# Backends whose causal offset must be a Python int (a static kernel mask).
STATIC_OFFSET_BACKENDS = frozenset({"splash"})


def attend(backend: str, q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask, *, block_q: int,
           block_kv: int) -> jax.Array:
    """Attention through the named backend (context-parallel when the mesh has a context axis)."""
    fn = registry.get(backend)
    hit = active()
    if hit is not None:
        if hit[0].exchange == "ring" and backend not in RING_BACKENDS:
            raise ValueError(f"context_exchange 'ring' runs the {sorted(RING_BACKENDS)} kernels; "
                             f"attention_backend {backend!r} needs context_exchange 'all_gather'")
        return context_parallel_attention(fn, q_BTNH, k_BSKH, v_BSKH, mask, block_q=block_q,
                                          block_kv=block_kv,
                                          static_offsets=backend in STATIC_OFFSET_BACKENDS)
    return fn(q_BTNH, k_BSKH, v_BSKH, mask, block_q=block_q, block_kv=block_kv)
