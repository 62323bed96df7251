"""Random RL batches shared by the objective tests (NumPy float64, junk in the padding)."""

from __future__ import annotations

import numpy as np
import pytest


def make_batch(seed: int, n: int = 6, t: int = 14, noise: float = 0.15) -> dict[str, np.ndarray]:
    """Prompt, response and padding per row; random sentences incl. one-token ones."""
    rng = np.random.default_rng(seed)
    logp = np.log(rng.uniform(0.05, 0.95, size=(n, t)))
    logp_old = logp + rng.normal(0.0, noise, size=(n, t))
    logp_ref = logp + rng.normal(0.0, 0.3, size=(n, t))
    mask = np.zeros((n, t), dtype=bool)
    sentence_ids = np.full((n, t), -1, dtype=np.int32)
    for i in range(n):
        start = int(rng.integers(0, 3))
        length = int(rng.integers(1, t - start + 1))
        mask[i, start : start + length] = True
        cuts = np.sort(rng.choice(np.arange(1, length + 1), size=min(3, length), replace=False))
        sid = np.searchsorted(cuts, np.arange(length), side="right")
        sentence_ids[i, start : start + length] = sid
    # Junk off the response: would blow up any objective that lets padding leak in.
    logp[~mask] = 40.0
    logp_old[~mask] = -np.inf
    logp_ref[~mask] = np.nan
    advantages = rng.normal(size=n)
    return {
        "logp": logp,
        "logp_old": logp_old,
        "mask": mask,
        "advantages": advantages,
        "sentence_ids": sentence_ids,
        "logp_ref": logp_ref,
    }


@pytest.fixture(params=[0, 1, 2])
def batch(request) -> dict[str, np.ndarray]:
    return make_batch(request.param)


def k3_reference(logp: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Token-mean k3 KL and its gradient in logp, float64 loops."""
    n_tok = max(mask.sum(), 1)
    total, grad = 0.0, np.zeros_like(logp)
    for i, t in zip(*np.nonzero(mask), strict=True):
        d = ref[i, t] - logp[i, t]
        total += np.exp(d) - d - 1.0
        grad[i, t] = (1.0 - np.exp(d)) / n_tok
    return total / n_tok, grad


@pytest.fixture
def k3():
    return k3_reference


def clip_term(r: float, a: float, eps_low: float, eps_high: float) -> tuple[float, bool]:
    """min(r a, clip(r) a) and whether the clipped branch is strictly smaller."""
    unclipped = r * a
    clipped = min(max(r, 1.0 - eps_low), 1.0 + eps_high) * a
    return min(unclipped, clipped), clipped < unclipped


@pytest.fixture
def clip():
    return clip_term


@pytest.fixture
def make():
    return make_batch


def finite_difference_grad(loss_fn, b: dict[str, np.ndarray], h: float = 1e-6) -> np.ndarray:
    """Central differences of loss_fn(batch) in each response token's logp (0 elsewhere)."""
    grad = np.zeros_like(b["logp"])
    for i, t in zip(*np.nonzero(b["mask"]), strict=True):
        up, down = b["logp"].copy(), b["logp"].copy()
        up[i, t] += h
        down[i, t] -= h
        grad[i, t] = (loss_fn({**b, "logp": up}) - loss_fn({**b, "logp": down})) / (2 * h)
    return grad


@pytest.fixture
def fd_grad():
    return finite_difference_grad
