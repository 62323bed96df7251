"""The expert-compute backend registry: backend name → function, and the weights they take.

It imports no backend: each backend module registers itself here, and the catalog
(ling_jax.ops.expert_compute) imports every backend module, so lookups go through the catalog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax

from ling_jax.ops.registry import Registry


class ExpertWeights(NamedTuple):
    gate_EDF: jax.Array
    up_EDF: jax.Array
    down_EFD: jax.Array


Backend = Callable[..., jax.Array]
_REGISTRY: Registry[Backend] = Registry("MoE backend")
register, names, get = _REGISTRY.register, _REGISTRY.names, _REGISTRY.get
