"""Logical-axis → mesh-axis rules, as data, and the PartitionSpecs they give.

The model names logical axes only (batch, seq, embed, heads, kv_heads, head_dim, mlp, expert,
vocab, layers); a rule set maps each to an ordered tuple of mesh axes. Named sets:
  fsdp_ep   tokens over data×fsdp×expert; non-expert weights ZeRO-3 over fsdp×context×expert;
            expert weights over expert (experts) × fsdp×context (embed); heads/mlp/vocab over
            tensor.
  ep_as_dp  as fsdp_ep, but the expert axis is plain data parallelism for non-expert weights
            (replicated over it): fewer all-gathers, more memory.
  fsdp      tokens over data×fsdp only; the expert axis shards expert weights alone and the
            tokens are replicated over it (EP by local compute + psum, no all-to-all).
  dp        everything replicated except the batch (data parallelism; small models, tests).
Every set shards the sequence (`seq`) over `context` (context parallelism) and also ZeRO-shards
weights over it, so a context axis adds memory savings as fsdp does.
A mesh axis is used at most once per spec (the first logical axis that asks wins), and an axis
whose size does not divide the dimension is skipped, so every spec is valid for its shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from jax.sharding import PartitionSpec as P

Rules = Mapping[str, tuple[str, ...]]

LOGICAL_AXES = ("batch", "seq", "embed", "heads", "kv_heads", "head_dim", "mlp", "expert",
                "vocab", "layers")

_COMMON: dict[str, tuple[str, ...]] = {
    "seq": ("context",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "expert": ("expert",),
    "vocab": ("tensor",),
    "layers": ("pipeline",),
}

RULE_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "fsdp_ep": {**_COMMON, "batch": ("data", "fsdp", "expert"),
                "embed": ("fsdp", "context", "expert")},
    "ep_as_dp": {**_COMMON, "batch": ("data", "fsdp", "expert"), "embed": ("fsdp", "context")},
    "fsdp": {**_COMMON, "batch": ("data", "fsdp"), "embed": ("fsdp", "context")},
    "dp": {**{k: () for k in _COMMON}, "batch": ("data", "fsdp", "expert"), "embed": (),
           "expert": ("expert",), "seq": ("context",)},
}


def get_rules(name_or_rules: str | Rules) -> dict[str, tuple[str, ...]]:
    """A rule set by name (or a mapping, checked); every logical axis must have an entry."""
    if isinstance(name_or_rules, str):
        if name_or_rules not in RULE_SETS:
            raise ValueError(f"mesh.rules: unknown rule set {name_or_rules!r}; choose one of "
                             f"{sorted(RULE_SETS)}")
        return dict(RULE_SETS[name_or_rules])
    rules = {k: tuple(v) for k, v in dict(name_or_rules).items()}
    missing = sorted(set(LOGICAL_AXES) - set(rules))
    if missing:
        raise ValueError(f"mesh.rules: no entry for logical axes {missing}; add them (use () to "
                         "replicate)")
    return rules


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    shape: Sequence[int] | None = None,
                    mesh_shape: Mapping[str, int] | None = None) -> P:
    """PartitionSpec for an array with these logical axes (None = replicated dimension).

    With `shape` and `mesh_shape`, mesh axes of size 1 and axes that do not divide the dimension
    are left out, so the spec always fits the array.
    """
    used: set[str] = set()
    out: list[str | tuple[str, ...] | None] = []
    for i, name in enumerate(logical_axes):
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
        chosen: list[str] = []
        for axis in rules.get(name, ()) if name else ():
            if axis in used:
                continue
            if mesh_shape is not None:
                if axis not in mesh_shape or mesh_shape[axis] == 1:
                    continue
                if shape is not None:
                    size = math.prod(mesh_shape[a] for a in (*chosen, axis))
                    if shape[i] % size:
                        continue
            chosen.append(axis)
            used.add(axis)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*out)


def axes_of(logical: str, rules: Rules, mesh_shape: Mapping[str, int]) -> tuple[str, ...]:
    """Mesh axes (of size > 1) that the rule for `logical` names."""
    return tuple(a for a in rules.get(logical, ()) if mesh_shape.get(a, 1) > 1)


def shard_count(logical: str, rules: Rules, mesh_shape: Mapping[str, int]) -> int:
    """How many ways the rule for `logical` splits a dimension on this mesh."""
    return math.prod(mesh_shape[a] for a in axes_of(logical, rules, mesh_shape))
