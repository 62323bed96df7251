"""The table of attention backends: imports each implementation and registers it by name.

`reference` (attention_core, the test reference: builds the [B,1,T,S] mask), `tiled` (flash-style,
memory linear in T; CPU/GPU) and `splash` (Pallas splash attention; TPU).
"""

from __future__ import annotations

import jax

from ling_jax.ops import attention_registry as registry
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


def attend(backend: str, q_BTNH, k_BSKH, v_BSKH, mask: AttentionMask, *, block_q: int,
           block_kv: int) -> jax.Array:
    """Attention through the named backend."""
    return registry.get(backend)(q_BTNH, k_BSKH, v_BSKH, mask, block_q=block_q, block_kv=block_kv)
