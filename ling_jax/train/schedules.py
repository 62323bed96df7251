"""Learning-rate schedules by name: WSM (warmup, then stable), plus decaying ones for comparison.

Ling 2.0 trains with WSM: linear warmup to the peak, then a constant LR to the end, with no decay;
"annealing" is done afterwards by merging checkpoints (reference §6.1, §6.3; see `merge.py`).

Every schedule takes the *global* optimizer step. `start_step` shifts it so that a phase's schedule
starts at the phase's first step: lr(step) = inner(max(step - start_step, 0)).

Config fields (a ConfigDict, a dict or any object with these attributes):
  kind           one of SCHEDULES ('wsm', 'constant', 'cosine', 'linear_decay')
  peak_lr        > 0
  warmup_steps   >= 0 (default 0); 'constant' requires 0
  total_steps    steps of the phase; required by 'cosine' and 'linear_decay', optional for 'wsm'
  init_lr        LR at the first warmup step (default 0.0)
  end_lr         final LR of the decaying kinds (default 0.0)
  start_step     global step where the phase starts (default 0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

_MISSING = object()


def config_field(cfg: Any, name: str, default: Any = _MISSING) -> Any:
    """Reads `name` from a mapping or an attribute-style config; raises a clear error if missing."""
    if isinstance(cfg, Mapping):
        value = cfg.get(name, default)
    else:
        value = getattr(cfg, name, default)
    if value is _MISSING:
        raise ValueError(f"config is missing the field '{name}'")
    return value


def _ramp(step: jax.Array, start: float, stop: float, steps: int) -> jax.Array:
    """start + (stop − start) · min(step, steps)/steps in float32; `stop` when steps == 0.

    Written as start + Δ·frac (not optax's (start − stop)·(1 − frac) + stop), so small values keep
    their relative precision in float32.
    """
    if steps == 0:
        return jnp.full(jnp.shape(step), stop, jnp.float32)
    frac = jnp.clip(step, 0, steps).astype(jnp.float32) / steps
    return jnp.float32(start) + jnp.float32(stop - start) * frac


def _wsm(p: dict[str, Any]) -> optax.Schedule:
    return lambda step: _ramp(jnp.asarray(step), p["init_lr"], p["peak_lr"], p["warmup_steps"])


def _constant(p: dict[str, Any]) -> optax.Schedule:
    if p["warmup_steps"] != 0:
        raise ValueError(
            "schedule kind 'constant' has no warmup but warmup_steps="
            f"{p['warmup_steps']}; set warmup_steps=0 or use kind='wsm' (warmup then constant)"
        )
    return lambda step: jnp.full(jnp.shape(step), p["peak_lr"], jnp.float32)


def _with_decay(p: dict[str, Any], decay: Callable[[jax.Array], jax.Array]) -> optax.Schedule:
    """Warmup to peak, then peak → end_lr along decay(frac) (1 at frac 0, 0 at frac 1)."""
    warm, span = p["warmup_steps"], p["total_steps"] - p["warmup_steps"]

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step)
        # span == 0 (warmup fills the phase): the decay is over as soon as the warmup ends.
        frac = jnp.clip(step - warm, 0, span).astype(jnp.float32) / span if span else 1.0
        decayed = p["end_lr"] + (p["peak_lr"] - p["end_lr"]) * decay(jnp.asarray(frac))
        return jnp.where(step < warm, _ramp(step, p["init_lr"], p["peak_lr"], warm), decayed)

    return schedule


def _cosine(p: dict[str, Any]) -> optax.Schedule:
    return _with_decay(p, lambda frac: 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))


def _linear_decay(p: dict[str, Any]) -> optax.Schedule:
    return _with_decay(p, lambda frac: 1.0 - frac)


# kind -> (builder, whether total_steps is required)
SCHEDULES: dict[str, tuple[Callable[[dict[str, Any]], optax.Schedule], bool]] = {
    "wsm": (_wsm, False),
    "constant": (_constant, False),
    "cosine": (_cosine, True),
    "linear_decay": (_linear_decay, True),
}


def _as_float(cfg: Any, name: str, default: Any) -> float:
    value = config_field(cfg, name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"schedule.{name} must be a number, got {value!r}") from None


def _read_params(cfg: Any) -> dict[str, Any]:
    """Reads and validates the schedule fields; every error names the field and the fix."""
    kind = config_field(cfg, "kind")
    if kind not in SCHEDULES:
        raise ValueError(f"schedule.kind={kind!r} is unknown; choose one of {sorted(SCHEDULES)}")
    p = {
        "kind": kind,
        "peak_lr": _as_float(cfg, "peak_lr", _MISSING),
        "warmup_steps": config_field(cfg, "warmup_steps", 0),
        "total_steps": config_field(cfg, "total_steps", None),
        "init_lr": _as_float(cfg, "init_lr", 0.0),
        "end_lr": _as_float(cfg, "end_lr", 0.0),
        "start_step": config_field(cfg, "start_step", 0),
    }
    if not p["peak_lr"] > 0:
        raise ValueError(f"schedule.peak_lr must be > 0, got {p['peak_lr']}")
    for name in ("init_lr", "end_lr"):
        if not 0 <= p[name] <= p["peak_lr"]:
            raise ValueError(
                f"schedule.{name} must be in [0, peak_lr={p['peak_lr']}], got {p[name]}"
            )
    for name in ("warmup_steps", "start_step"):
        if not isinstance(p[name], int) or isinstance(p[name], bool) or p[name] < 0:
            raise ValueError(f"schedule.{name} must be an integer >= 0, got {p[name]!r}")
    total = p["total_steps"]
    needs_total = SCHEDULES[kind][1]
    if total is None and needs_total:
        raise ValueError(f"schedule kind {kind!r} needs schedule.total_steps (steps in the phase)")
    if total is not None:
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            raise ValueError(f"schedule.total_steps must be an integer > 0, got {total!r}")
        if p["warmup_steps"] > total:
            raise ValueError(
                f"schedule.warmup_steps={p['warmup_steps']} exceeds schedule.total_steps={total}; "
                "shorten the warmup or lengthen the phase"
            )
    return p


def make_schedule(cfg: Any) -> optax.Schedule:
    """Builds the LR schedule named by `cfg.kind`, as a function of the global optimizer step.

    Warmup follows optax: lr(start_step) = init_lr, lr(start_step + warmup_steps) = peak_lr.
    """
    p = _read_params(cfg)
    inner = SCHEDULES[p["kind"]][0](p)
    start = p["start_step"]
    # Before the phase starts, hold the phase's first value (the loop never asks for it).
    return lambda step: inner(jnp.maximum(jnp.asarray(step) - start, 0))
