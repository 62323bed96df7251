"""WSM checkpoint merging: weighted averages of parameter trees (reference §6.3; WSM paper).

Checkpoints θ_0..θ_k are ordered oldest first and evenly spaced; U_i = θ_i − θ_{i−1} is the
(constant-LR) update between consecutive checkpoints. Merging with coefficients c_0..c_k (Σc = 1):

    Σ_j c_j θ_j = θ_0 + Σ_{i=1..k} w_i U_i,   w_i = Σ_{j≥i} c_j,

i.e. the same as applying the updates with their LR scaled by w_i: a decay profile. Conversely a
monotone profile 1 ≥ w_1 ≥ … ≥ w_k ≥ 0 is reproduced by
c_k = w_k, c_j = w_j − w_{j+1} (1 ≤ j < k), c_0 = 1 − w_1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

COEFF_TOL = 1e-6  # how far Σc may be from 1


def wsm_merge_coefficients(decay_weights: Sequence[float]) -> np.ndarray:
    """Coefficients c_0..c_k (float64) for checkpoints θ_0..θ_k from the decay profile w_1..w_k."""
    w = np.asarray(decay_weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(
            f"decay_weights must be a non-empty 1-D sequence w_1..w_k, got shape {w.shape}"
        )
    if not np.all(np.isfinite(w)) or w[0] > 1.0 or w[-1] < 0.0 or np.any(np.diff(w) > 0):
        raise ValueError(
            "decay_weights must be non-increasing within [0, 1] "
            f"(1 >= w_1 >= ... >= w_k >= 0), got {w}"
        )
    c = np.empty(w.size + 1, dtype=np.float64)
    c[0] = 1.0 - w[0]
    c[1:-1] = w[:-1] - w[1:]
    c[-1] = w[-1]
    return c


def decay_weights_from_coefficients(coeffs: Sequence[float]) -> np.ndarray:
    """The inverse map: w_i = Σ_{j≥i} c_j for i = 1..k (the effective LR multipliers)."""
    c = np.asarray(coeffs, dtype=np.float64)
    return np.cumsum(c[::-1])[::-1][1:]


def uniform_coefficients(n: int) -> np.ndarray:
    """Plain average of n checkpoints (the Ling 2.0 recipe: top-N by validation, uniform)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of checkpoints to merge must be an integer >= 1, got {n!r}")
    return np.full(n, 1.0 / n)


def _linear_profile(k: int) -> np.ndarray:
    return 1.0 - np.arange(1, k + 1) / (k + 1)


def _cosine_profile(k: int) -> np.ndarray:
    return 0.5 * (1.0 + np.cos(np.pi * np.arange(1, k + 1) / (k + 1)))


def _inverse_sqrt_profile(k: int) -> np.ndarray:
    return 1.0 / np.sqrt(np.arange(1, k + 1))


# name -> w_1..w_k for k intervals; each is non-increasing in [0, 1].
DECAY_PROFILES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": _linear_profile,
    "cosine": _cosine_profile,
    "inverse_sqrt": _inverse_sqrt_profile,
}


def profile_coefficients(profile: str, n_checkpoints: int) -> np.ndarray:
    """Coefficients for n checkpoints that emulate a named LR decay over the merge window."""
    if profile == "uniform":
        return uniform_coefficients(n_checkpoints)
    if profile not in DECAY_PROFILES:
        raise ValueError(
            f"merge profile {profile!r} is unknown; "
            f"choose 'uniform' or one of {sorted(DECAY_PROFILES)}"
        )
    if not isinstance(n_checkpoints, int) or n_checkpoints < 2:
        raise ValueError(f"a decay profile needs n_checkpoints >= 2, got {n_checkpoints!r}")
    return wsm_merge_coefficients(DECAY_PROFILES[profile](n_checkpoints - 1))


def _check_coefficients(coeffs: Sequence[float], n_trees: int) -> np.ndarray:
    c = np.asarray(coeffs, dtype=np.float64)
    if c.ndim != 1 or c.size != n_trees:
        raise ValueError(
            f"got {c.size} merge coefficients for {n_trees} checkpoints; give one each"
        )
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"merge coefficients must be finite and >= 0, got {c}")
    if not math.isclose(float(c.sum()), 1.0, rel_tol=0.0, abs_tol=COEFF_TOL):
        raise ValueError(
            f"merge coefficients must sum to 1 (within {COEFF_TOL}), got sum {c.sum()!r}"
        )
    return c


def _flatten(tree: Any) -> tuple[list[str], list[Any], Any]:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in with_path]
    return paths, [x for _, x in with_path], treedef


def _merge_leaf(path: str, leaves: list[Any], c: np.ndarray) -> Any:
    first = leaves[0]
    for i, leaf in enumerate(leaves[1:], start=1):
        if jnp.shape(leaf) != jnp.shape(first) or jnp.result_type(leaf) != jnp.result_type(first):
            raise ValueError(
                f"leaf {path}: checkpoint {i} has {jnp.result_type(leaf)}{list(jnp.shape(leaf))}, "
                f"checkpoint 0 has {jnp.result_type(first)}{list(jnp.shape(first))}"
            )
    dtype = jnp.result_type(first)
    if not jnp.issubdtype(dtype, jnp.floating):
        # Non-float leaves (counters, ids) cannot be averaged: they must agree.
        if any(not np.array_equal(np.asarray(x), np.asarray(first)) for x in leaves[1:]):
            raise ValueError(f"leaf {path}: non-float {dtype} leaf differs between checkpoints")
        return first
    acc = jnp.zeros(jnp.shape(first), jnp.float32)
    for coeff, leaf in zip(c, leaves, strict=True):
        acc = acc + jnp.float32(coeff) * jnp.asarray(leaf, jnp.float32)
    return acc.astype(dtype)


def merge_pytrees(trees: Sequence[Any], coeffs: Sequence[float]) -> Any:
    """Σ_j coeffs[j] · trees[j] per leaf, accumulated in float32, returned in each leaf's dtype."""
    if len(trees) == 0:
        raise ValueError("merge_pytrees needs at least one parameter tree")
    c = _check_coefficients(coeffs, len(trees))
    paths, first_leaves, treedef = _flatten(trees[0])
    all_leaves = [first_leaves]
    for i, tree in enumerate(trees[1:], start=1):
        paths_i, leaves_i, _ = _flatten(tree)
        if paths_i != paths:
            missing = sorted(set(paths) - set(paths_i))
            extra = sorted(set(paths_i) - set(paths))
            raise ValueError(
                f"checkpoint {i} has a different tree than checkpoint 0: "
                f"missing {missing[:5]}, extra {extra[:5]}"
            )
        all_leaves.append(leaves_i)
    merged = [
        _merge_leaf(path, [leaves[n] for leaves in all_leaves], c) for n, path in enumerate(paths)
    ]
    return jax.tree_util.tree_unflatten(treedef, merged)
