"""Cross-entropy of an LM head, optionally over token chunks so that [tokens, vocab] logits never
live whole.

At long context the fp32 logits and their gradient dominate a train step's temporaries (Ling-1T at
16K tokens per chip: 16K x 157K x 4 B = 10 GB each, twice with MTP). `head_nll_sum(..., chunks=n)`
runs the head and the loss over n strided token chunks in a checkpointed scan: the forward keeps
only the sum, the backward recomputes one chunk's logits at a time (one extra head matmul). Chunk i
holds tokens i, n + i, 2n + i, ... of every row, so a sequence sharded over devices (context
parallelism) stays evenly sharded in every chunk and no chunk moves data between devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ling_jax.ops.mixed_einsum import mixed_einsum


def token_nll(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] per position in float32; 0 where masked."""
    logits = jnp.asarray(logits, jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)  # max-shifted, numerically stable
    safe_targets = jnp.where(mask, targets, 0)  # masked targets may be anything (e.g. -100)
    picked = jnp.take_along_axis(logits, safe_targets[..., None].astype(jnp.int32), axis=-1)
    return jnp.where(mask, lse - picked[..., 0], 0.0)


def head_logits(h_BTD: jax.Array, head_DV: jax.Array, dtype) -> jax.Array:
    """fp32 logits of hidden states through the head, in `dtype` with fp32 accumulation."""
    return mixed_einsum("btd,dv->btv", h_BTD, head_DV, dtype)


def head_nll_sum(h_BTD: jax.Array, head_DV: jax.Array, targets_BT: jax.Array,
                 mask_BT: jax.Array, dtype, chunks: int = 1) -> jax.Array:
    """Σ over unmasked positions of -log softmax(h · head)[target], float32.

    chunks=1 computes all logits at once; chunks=n scans n strided token chunks (T is padded with
    masked positions to a multiple of n) and recomputes each chunk's logits in the backward.
    """
    if not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"loss chunks must be an integer >= 1, got {chunks!r}")
    mask_BT = jnp.asarray(mask_BT).astype(bool)
    if chunks == 1:
        return jnp.sum(token_nll(head_logits(h_BTD, head_DV, dtype), targets_BT, mask_BT))
    b, t, d = h_BTD.shape
    pad = -t % chunks
    if pad:
        h_BTD = jnp.pad(h_BTD, ((0, 0), (0, pad), (0, 0)))
        targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
        mask_BT = jnp.pad(mask_BT, ((0, 0), (0, pad)))
    per = (t + pad) // chunks
    # [B, T] -> [n, B, T/n]: chunk i holds positions i, n + i, ... (strided, see the docstring).
    strided = lambda x: jnp.moveaxis(x.reshape(b, per, chunks, *x.shape[2:]), 2, 0)

    @jax.checkpoint
    def body(total, xs):
        h, targets, mask = xs
        return total + jnp.sum(token_nll(head_logits(h, head_DV, dtype), targets, mask)), None

    xs = (strided(h_BTD), strided(targets_BT), strided(mask_BT))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total
