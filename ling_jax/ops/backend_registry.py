"""The expert-compute backend registry: backend name → function, and the weights they take.

It imports no backend: each backend module registers itself here, and the catalog
(ling_jax.ops.expert_compute) imports every backend module, so lookups go through the catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax


class ExpertWeights(NamedTuple):
    gate_EDF: jax.Array
    up_EDF: jax.Array
    down_EFD: jax.Array


Backend = Callable[..., jax.Array]
_REGISTRY: dict[str, Backend] = {}


def register(name: str) -> Callable[[Backend], Backend]:
    """Decorator: file `fn` under `name`."""
    def wrap(fn: Backend) -> Backend:
        _REGISTRY[name] = fn
        return fn

    return wrap


def names() -> list[str]:
    """The names registered so far."""
    return sorted(_REGISTRY)


def get(name: str) -> Backend:
    """The backend registered under `name` (ValueError naming the choices otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown MoE backend {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]
