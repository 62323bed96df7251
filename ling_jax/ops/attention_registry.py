"""Attention backends by name (model field `attention_backend`). This module imports none of them:
ling_jax.ops.attention_backends is the one table that imports and registers the implementations.

A backend maps (q [B,T,N,H], k, v [B,S,K,H], AttentionMask, block_q=, block_kv=) to [B,T,N,H] in
v's dtype; block sizes are hints that backends without tiles ignore.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from ling_jax.ops.registry import Registry

Backend = Callable[..., jax.Array]
_REGISTRY: Registry[Backend] = Registry("attention backend")
register, names, get = _REGISTRY.register, _REGISTRY.names, _REGISTRY.get
