"""Sizes a config implies, computed from its numbers alone, checked before anything is allocated.

`import-hf`, `logits` and `generate` hold every parameter in this machine's memory, so a config
whose parameters cannot fit (say `num_experts: 1000000000`) is refused in one line before a key
list or an array is built; lengths beyond `max_position_embeddings` are refused the same way.
"""

from __future__ import annotations

import os

import numpy as np


def parameter_count(cfg) -> int:
    """Parameters of the model and its MTP layers (norm scales and biases left out: a lower bound
    within a fraction of a percent of ling_jax.model.param_count on real configs)."""
    d, n, kv, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    experts = cfg.num_experts
    shared = cfg.moe_shared_expert_intermediate_size or (
        cfg.moe_intermediate_size * cfg.num_shared_experts)
    attention = (n + 2 * kv) * h * d + n * h * d
    dense_layer = attention + 3 * d * cfg.intermediate_size
    moe_layer = attention + experts * (3 * d * cfg.moe_intermediate_size + d) + 3 * d * shared
    dense = min(cfg.first_k_dense_replace, cfg.num_hidden_layers)
    embeddings = cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2)
    mtp = cfg.num_nextn_predict_layers * (moe_layer + 2 * d * d)
    return (embeddings + dense * dense_layer + (cfg.num_hidden_layers - dense) * moe_layer
            + mtp)


def machine_memory_bytes() -> int:
    """Physical memory of this machine (bytes)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def check_fits_in_memory(cfg, *, memory: int | None = None) -> None:
    """ValueError when the parameters of `cfg` exceed this machine's memory."""
    memory = machine_memory_bytes() if memory is None else memory
    count = parameter_count(cfg)
    nbytes = count * np.dtype(cfg.param_dtype).itemsize
    if nbytes > memory:
        raise ValueError(
            f"this config describes {count:,} parameters ({_gib(nbytes)} in "
            f"{cfg.param_dtype}), more than this machine's {_gib(memory)} of memory; check its "
            f"sizes (num_experts={cfg.num_experts}, num_hidden_layers={cfg.num_hidden_layers}, "
            f"hidden_size={cfg.hidden_size}, vocab_size={cfg.vocab_size})")


def check_length(cfg, prompt_tokens: int, new_tokens: int = 0) -> None:
    """ValueError when prompt + new tokens exceed the model's max_position_embeddings."""
    limit = cfg.max_position_embeddings
    total = prompt_tokens + new_tokens
    if total > limit:
        what = (f"{prompt_tokens} prompt tokens + {new_tokens} new tokens = {total}" if new_tokens
                else f"{prompt_tokens} tokens")
        fix = "lower --max_new_tokens or shorten the prompt" if new_tokens else "shorten --tokens"
        raise ValueError(f"{what} exceed the model's max_position_embeddings={limit}; {fix}")


def check_kv_cache_fits(cfg, batch: int, length: int, *, memory: int | None = None) -> None:
    """ValueError when the decode KV cache of `batch` sequences of `length` cannot fit in memory."""
    memory = machine_memory_bytes() if memory is None else memory
    layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    nbytes = (2 * layers * batch * length * cfg.num_key_value_heads * cfg.head_dim
              * np.dtype(cfg.dtype).itemsize)
    if nbytes > memory:
        raise ValueError(f"the KV cache of {batch} sequence(s) x {length} tokens needs "
                         f"{_gib(nbytes)}, more than this machine's {_gib(memory)}; lower "
                         "--max_new_tokens or --num_samples")
