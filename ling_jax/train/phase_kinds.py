"""The phase-kind registry: kind name → runner class, imported from its module on first use.

The registry imports none of its kinds. KIND_PATHS is the one place that says where each kind
lives ("module:Class"); the module is imported only when an experiment names the kind, so the
loop never imports ling_jax.rl unless a phase of kind `rl` runs or is validated.
`register_phase_kind` adds a kind at run time (a plugin or a test).
"""

from __future__ import annotations

import importlib
from typing import Any

KIND_PATHS: dict[str, str] = {
    "pretrain": "ling_jax.train.phases:LMPhase",
    "midtrain": "ling_jax.train.phases:LMPhase",
    "rl": "ling_jax.rl.phase:RLPhase",
    "sft": "ling_jax.sft.phase:SFTPhase",
}
_LOADED: dict[str, Any] = {}


def register_phase_kind(name: str, kind: Any) -> None:
    """Add a phase kind (e.g. `rl`); it must provide validate() and the PhaseRunner interface."""
    _LOADED[name] = kind


def kind_names() -> list[str]:
    """Every phase kind an experiment may name (nothing is imported)."""
    return sorted({*KIND_PATHS, *_LOADED})


def phase_kind(name: str) -> Any:
    """The runner class of kind `name`, importing its module the first time."""
    if name not in _LOADED:
        if name not in KIND_PATHS:
            raise ValueError(f"unknown phase kind {name!r}; choose one of {kind_names()}")
        module, attr = KIND_PATHS[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(module), attr)
    return _LOADED[name]


def phase_kinds() -> dict[str, Any]:
    """Every phase kind, loaded (imports each kind's module)."""
    return {name: phase_kind(name) for name in kind_names()}
