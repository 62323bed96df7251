"""Greedy sampling with the full forward on a fixed-size buffer (for end-of-run samples).

One compiled forward serves every step; the KV-cache sampler for RL lives in ling_jax.rl.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def greedy_sample(graphdef, params, biases, prompt_ids: list[int], *, max_new_tokens: int,
                  eos_id: int | None = None, pad_id: int = 0) -> list[int]:
    """New token ids after `prompt_ids`, stopping at eos_id or max_new_tokens."""
    length = len(prompt_ids) + max_new_tokens
    buf = np.full((1, length), pad_id, np.int32)
    buf[0, : len(prompt_ids)] = prompt_ids

    @jax.jit
    def next_token(params, biases, ids, position):
        logits = nnx.merge(graphdef, params, biases)(ids).logits
        return jnp.argmax(logits[0, position - 1]).astype(jnp.int32)

    out = []
    for position in range(len(prompt_ids), length):
        token = int(next_token(params, biases, jnp.asarray(buf), position))
        if eos_id is not None and token == eos_id:
            break
        buf[0, position] = token
        out.append(token)
    return out
