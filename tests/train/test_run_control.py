"""The non-finite guard's stop line names the step, what was not finite and the likely cause."""

from __future__ import annotations

import math

import pytest

from ling_jax.train.run_control import NonFiniteError, NonFiniteGuard


def _record(step: int, **values) -> dict:
    return {"step": step, "phase": "pretrain", "loss": 2.5, "grad_norm": 1.2, "lr": 1e-3,
            "nonfinite": 1.0, **values}


def test_stops_after_the_limit_in_a_row_and_names_the_update():
    guard = NonFiniteGuard(3)
    guard.check(_record(4, lr=math.inf), 3)
    guard.check({**_record(5), "nonfinite": 0.0}, 3)  # a finite step resets the count
    guard.check(_record(6, lr=math.inf), 3)
    guard.check(_record(7, lr=math.inf), 3)
    with pytest.raises(NonFiniteError) as info:
        guard.check(_record(8, lr=math.inf), 3)
    line = str(info.value)
    assert line.startswith("step 8 (pretrain): the update (lr inf) not finite for 3 steps")
    assert "learning rate" in line and "the last checkpoint is step 3" in line and "\n" not in line


def test_names_a_non_finite_loss_and_a_missing_checkpoint():
    guard = NonFiniteGuard(1)
    with pytest.raises(NonFiniteError, match=r"step 1 \(pretrain\): loss nan not finite .* "
                                             r"no checkpoint was written"):
        guard.check(_record(1, loss=math.nan), None)
    NonFiniteGuard(0).check(_record(1, loss=math.nan), None)  # 0: never stops
