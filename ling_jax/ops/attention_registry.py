"""Attention backends by name (model field `attention_backend`). This module imports none of them:
ling_jax.ops.attention_backends is the one table that imports and registers the implementations.

A backend maps (q [B,T,N,H], k, v [B,S,K,H], AttentionMask, block_q=, block_kv=) to [B,T,N,H] in
v's dtype; block sizes are hints that backends without tiles ignore.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

Backend = Callable[..., jax.Array]
_REGISTRY: dict[str, Backend] = {}


def register(name: str) -> Callable[[Backend], Backend]:
    def wrap(fn: Backend) -> Backend:
        _REGISTRY[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {names()}")
    return _REGISTRY[name]
