"""Schedules against closed-form NumPy formulas, phase offsets, and config validation."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ling_jax.train.schedules import SCHEDULES, make_schedule


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def _ref_warmup(s, init, peak, warmup):
    return init + (peak - init) * min(s, warmup) / warmup


def test_wsm_warmup_then_constant_forever():
    cfg = {"kind": "wsm", "peak_lr": 3.36e-4, "warmup_steps": 20, "init_lr": 1e-6}
    steps = list(range(0, 30)) + [1000, 10**7]
    got = _values(make_schedule(cfg), steps)
    want = [_ref_warmup(s, 1e-6, 3.36e-4, 20) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == pytest.approx(1e-6) and got[-1] == pytest.approx(3.36e-4)


def test_wsm_without_warmup_is_peak_from_step_zero():
    sched = make_schedule({"kind": "wsm", "peak_lr": 2e-4, "warmup_steps": 0})
    np.testing.assert_allclose(_values(sched, [0, 1, 50]), [2e-4] * 3, rtol=1e-6)


def test_constant():
    sched = make_schedule(ml_collections.ConfigDict({"kind": "constant", "peak_lr": 5e-4}))
    np.testing.assert_allclose(_values(sched, [0, 7, 10**6]), [5e-4] * 3, rtol=1e-6)


def test_cosine_matches_formula():
    peak, init, end, warm, total = 1e-3, 0.0, 1e-5, 10, 110
    cfg = dict(kind="cosine", peak_lr=peak, warmup_steps=warm, total_steps=total, end_lr=end)
    steps = range(0, 130, 3)
    got = _values(make_schedule(cfg), steps)
    want = []
    for s in steps:
        if s < warm:
            want.append(_ref_warmup(s, init, peak, warm))
        else:
            frac = min(s - warm, total - warm) / (total - warm)
            want.append(end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac)))
    # float32: 1 + cos(πx) near x = 1 loses digits, so the bound is an ulp of the peak, not of lr.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=peak * 2**-23)


def test_linear_decay_matches_formula():
    peak, init, end, warm, total = 2e-3, 1e-4, 2e-4, 8, 40
    cfg = dict(
        kind="linear_decay",
        peak_lr=peak,
        warmup_steps=warm,
        total_steps=total,
        init_lr=init,
        end_lr=end,
    )
    steps = range(0, 50)
    got = _values(make_schedule(cfg), steps)
    want = [
        _ref_warmup(s, init, peak, warm)
        if s < warm
        else peak + (end - peak) * min(s - warm, total - warm) / (total - warm)
        for s in steps
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_start_step_offsets_the_phase(kind):
    base = dict(
        kind=kind, peak_lr=1e-3, warmup_steps=0 if kind == "constant" else 5, total_steps=50
    )
    start = 1234
    plain = make_schedule(base)
    shifted = make_schedule({**base, "start_step": start})
    for s in [0, 1, 4, 5, 6, 30, 49, 50, 70]:
        assert float(shifted(start + s)) == pytest.approx(float(plain(s)), rel=1e-6)
    # Before the phase starts the schedule holds its first value.
    assert float(shifted(start - 10)) == pytest.approx(float(plain(0)), rel=1e-6)


def test_schedule_is_jittable_on_traced_steps():
    sched = make_schedule(dict(kind="wsm", peak_lr=1e-3, warmup_steps=10, start_step=100))
    got = jax.jit(jax.vmap(sched))(jnp.arange(95, 120))
    want = [1e-3 * min(max(s - 100, 0), 10) / 10 for s in range(95, 120)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "cfg, field",
    [
        (dict(kind="warmup_stable_decay", peak_lr=1e-3), "schedule.kind"),
        (dict(kind="wsm", peak_lr=0.0), "schedule.peak_lr"),
        (dict(kind="wsm", peak_lr=-1e-3), "schedule.peak_lr"),
        (dict(kind="wsm", peak_lr="fast"), "schedule.peak_lr"),
        (dict(kind="wsm", peak_lr=1e-3, warmup_steps=2001, total_steps=2000), "warmup_steps"),
        (dict(kind="wsm", peak_lr=1e-3, warmup_steps=2.5), "schedule.warmup_steps"),
        (dict(kind="wsm", peak_lr=1e-3, warmup_steps=-1), "schedule.warmup_steps"),
        (dict(kind="cosine", peak_lr=1e-3, warmup_steps=10), "schedule.total_steps"),
        (dict(kind="linear_decay", peak_lr=1e-3, total_steps=0), "schedule.total_steps"),
        (dict(kind="constant", peak_lr=1e-3, warmup_steps=100), "warmup_steps"),
        (dict(kind="wsm", peak_lr=1e-3, init_lr=2e-3), "schedule.init_lr"),
        (dict(kind="cosine", peak_lr=1e-3, total_steps=9, end_lr=-1.0), "schedule.end_lr"),
        (dict(kind="wsm", peak_lr=1e-3, start_step=-5), "schedule.start_step"),
        (dict(peak_lr=1e-3), "'kind'"),
    ],
)
def test_bad_configs_name_the_field(cfg, field):
    with pytest.raises(ValueError, match=None) as err:
        make_schedule(cfg)
    assert field in str(err.value)


def test_unknown_kind_lists_the_choices():
    with pytest.raises(ValueError) as err:
        make_schedule({"kind": "wsd", "peak_lr": 1e-3})
    for kind in SCHEDULES:
        assert kind in str(err.value)


@pytest.mark.parametrize("kind", ["cosine", "linear_decay"])
def test_decay_with_warmup_filling_the_phase_ends_at_end_lr(kind):
    sched = make_schedule(
        dict(kind=kind, peak_lr=1e-3, warmup_steps=10, total_steps=10, end_lr=1e-4)
    )
    np.testing.assert_allclose(_values(sched, [0, 5, 10, 11]), [0, 5e-4, 1e-4, 1e-4], rtol=1e-6)
