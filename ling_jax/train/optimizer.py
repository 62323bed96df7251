"""AdamW with a weight-decay mask and fp32 global-norm clipping (reference §6.1).

Ling 2.0: AdamW β1 0.9, β2 0.95, weight decay 0.1, gradient-norm clip 1.0. Expert biases are
separate state updated by `balancing.py`, never seen by the optimizer.

The state layout does not depend on the schedule, so a new phase can build a new optimizer with its
own schedule and keep the previous optimizer state (moments, step count, hyperparameters). The
schedule sees the optimizer's update count, which is the global step when the state is carried
from step 0 (hence `start_step` in the phase schedules).

Config fields (ConfigDict, dict or attributes; all optional):
  b1 (0.9), b2 (0.95), eps (1e-8), weight_decay (0.1), max_grad_norm (1.0; None disables clipping),
  mu_dtype (None: same as params; or 'float32' / 'bfloat16' for the first moment)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ling_jax.train.schedules import config_field

OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "b1": 0.9,
    "b2": 0.95,
    "eps": 1e-8,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "mu_dtype": None,
}

_MU_DTYPES = {None: None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}
_NO_DECAY_NAMES = frozenset({"scale"})  # RMSNorm weights are leaves named 'scale'


def _leaf_name(path: tuple[Any, ...]) -> str:
    if not path:
        return ""
    key = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: leaves with ndim >= 2 that are not norm 'scale' weights."""

    def decays(path: tuple[Any, ...], leaf: Any) -> bool:
        ndim = leaf.ndim if hasattr(leaf, "ndim") else jnp.ndim(leaf)  # arrays or ShapeDtypeStruct
        return ndim >= 2 and _leaf_name(path) not in _NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def global_norm(tree: Any) -> jax.Array:
    """sqrt of the sum of squares of every leaf, accumulated in float32 whatever the leaf dtype."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    squares = [jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))) for x in leaves]
    return jnp.sqrt(sum(squares))


def clip_by_global_norm_fp32(max_norm: float) -> optax.GradientTransformation:
    """Scales updates by min(1, max_norm / global_norm); the norm is computed in float32."""

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple:
        del params
        norm = global_norm(updates)
        # jnp.maximum guards the division when the norm is 0 (then the scale is 1).
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
        clipped = jax.tree_util.tree_map(lambda g: (g * scale).astype(g.dtype), updates)
        return clipped, state

    return optax.GradientTransformation(init_fn, update_fn)


def _read_config(opt_cfg: Any) -> dict[str, Any]:
    """Reads the optimizer fields with defaults and validates them; errors name the field."""
    c = {k: config_field(opt_cfg, k, v) for k, v in OPTIMIZER_DEFAULTS.items()}
    for name in ("b1", "b2"):
        if not 0.0 <= float(c[name]) < 1.0:
            raise ValueError(f"optimizer.{name} must be in [0, 1), got {c[name]}")
    if not float(c["eps"]) > 0:
        raise ValueError(f"optimizer.eps must be > 0, got {c['eps']}")
    if not float(c["weight_decay"]) >= 0:
        raise ValueError(f"optimizer.weight_decay must be >= 0, got {c['weight_decay']}")
    if c["max_grad_norm"] is not None and not float(c["max_grad_norm"]) > 0:
        raise ValueError(
            f"optimizer.max_grad_norm must be > 0 (or None to disable), got {c['max_grad_norm']}"
        )
    if c["mu_dtype"] not in _MU_DTYPES:
        raise ValueError(
            f"optimizer.mu_dtype={c['mu_dtype']!r} is unknown; choose one of {list(_MU_DTYPES)}"
        )
    return c


def make_optimizer(opt_cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """clip (fp32 global norm) -> AdamW with the LR schedule injected and the decay mask.

    Read the LR of the last update with `current_lr(opt_state)`.
    """
    c = _read_config(opt_cfg)
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask", "mu_dtype"))(
        learning_rate=schedule,
        b1=float(c["b1"]),
        b2=float(c["b2"]),
        eps=float(c["eps"]),
        weight_decay=float(c["weight_decay"]),
        mask=decay_mask,
        mu_dtype=_MU_DTYPES[c["mu_dtype"]],
    )
    if c["max_grad_norm"] is None:
        return optax.chain(optax.identity(), adamw)  # same state layout as with clipping
    return optax.chain(clip_by_global_norm_fp32(float(c["max_grad_norm"])), adamw)


def _find_inject_state(opt_state: Any) -> Any:
    # optax names it InjectHyperparamsState or InjectStatefulHyperparamsState by version.
    is_inject = lambda x: hasattr(x, "hyperparams") and hasattr(x, "count")
    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_inject):
        if is_inject(node):
            return node
    raise ValueError("opt_state has no injected hyperparameters; build it with make_optimizer")


def current_lr(opt_state: Any) -> jax.Array:
    """The learning rate that the most recent update used (0-step state: the schedule at step 0)."""
    return _find_inject_state(opt_state).hyperparams["learning_rate"]


def optimizer_step(opt_state: Any) -> jax.Array:
    """Number of updates applied so far (the count the schedule sees at the next update)."""
    return _find_inject_state(opt_state).count
