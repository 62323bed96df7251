"""Logical axis names on activations: sharding hints that are no-ops until parallel/ sets rules.

The model names axes (batch, seq, embed, heads, kv_heads, head_dim, mlp, expert, vocab) and never
mesh axes; `ling_jax.parallel` installs a mesh and logical→mesh rules with `activation_sharding`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import jax

# (mesh, logical names -> PartitionSpec) or None when unsharded.
_RULES: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("ling_activation_rules",
                                                                      default=None)


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh,
                        to_spec: Callable[[tuple[str | None, ...]], jax.sharding.PartitionSpec]
                        ) -> Iterator[None]:
    """While tracing inside this context, `constrain` pins activations to `to_spec(axes)` on mesh."""
    token = _RULES.set((mesh, to_spec))
    try:
        yield
    finally:
        _RULES.reset(token)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """x with a sharding constraint from its logical axes; identity without rules."""
    rules = _RULES.get()
    if rules is None:
        return x
    mesh, to_spec = rules
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, to_spec(axes)))
