"""Context parallelism on 8 CPU devices equals the single-device train step (fp32, rel ≤ 1e-5).

The sequence is sharded over `context` in zig-zag order; attention gathers K/V; MTP's shifted
tokens and targets cross shard boundaries; MoE dispatch (EP all-to-all over `expert`) and the
losses see sequence-sharded tokens. The random batch packs two documents per row and pads one.
Both slow (~100 s and ~450 s on a shared 2-core CPU): gradients of one step on context 4 × data 2
(tiled attention, the loss over 4 token chunks), and three steps on context 2 × expert 2 × data 2
with EP and the parameters after.
"""

import functools

import jax
import numpy as np
import pytest

from ling_jax.parallel.sharding import plan_for_experiment
from ling_jax.train import step as train_step_module
from tests.parallel.helpers import random_batch, rel, run_steps, small_cfg, step_parts

METRICS = ("loss", "lm_loss", "mtp_loss", "z_loss", "grad_norm")


def _cfg(mesh=None, *, backend="blocked", attention="tiled", loss_chunks=1):
    cfg = small_cfg(mesh, backend=backend)
    cfg.model.attention_backend = attention
    cfg.model.loss_chunks = loss_chunks
    cfg.model.attention_block_q = cfg.model.attention_block_kv = 2  # several tiles per chunk
    return cfg


def _grads_fn(fn):
    kw = fn.keywords

    def grads(state, batch):
        norms = train_step_module._normalisers(batch, kw["sc"].num_mtp)
        loss, aux, g = train_step_module._grads(state["params"], state["biases"], batch, norms,
                                                kw["graphdef"], kw["sc"])
        return loss, aux, g

    return grads


@functools.cache
def _reference(attention: str, steps: int):
    fn, make, _ = step_parts(_cfg(attention=attention))
    state0 = make()
    out = jax.device_get(jax.jit(_grads_fn(fn))(state0, random_batch(0)))
    state, metrics = run_steps(jax.jit(fn), state0, steps) if steps else (None, None)
    return jax.device_get(state0), out, state, metrics


def _sharded(mesh, backend, attention, steps, loss_chunks=1):
    state0, *_ = _reference(attention, steps)
    cfg = _cfg(mesh, backend=backend, attention=attention, loss_chunks=loss_chunks)
    fn, _, abstract = step_parts(cfg)
    plan = plan_for_experiment(cfg, abstract)
    placed = plan.place(jax.tree.map(np.asarray, state0))
    with plan.context():
        out = jax.jit(_grads_fn(fn), in_shardings=(plan.state, plan.batch))(placed,
                                                                            random_batch(0))
    state, metrics = run_steps(plan.shard_fn(fn), placed, steps) if steps else (None, None)
    return plan, jax.device_get(out), state, metrics


def _assert_grads_match(want, got):
    assert rel(want[0], got[0]) <= 1e-5, (want[0], got[0])
    for key in ("lm_sum", "mtp_sums", "z_sum"):
        assert rel(want[1][key], got[1][key]) <= 1e-5, key
    np.testing.assert_array_equal(want[1]["counts"], got[1]["counts"])
    paths = jax.tree_util.tree_flatten_with_path(want[2])[0]
    for (path, a), b in zip(paths, jax.tree.leaves(got[2]), strict=True):
        assert rel(a, b) <= 1e-5, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_context4_data2_gradients_match_one_device():
    # The sharded side also runs the loss over 4 strided token chunks (the reference: all at once).
    plan, out, _, _ = _sharded(dict(context=4, data=2), "blocked", "tiled", 0, loss_chunks=4)
    assert plan.context_shards == 4
    assert plan.batch.spec == jax.sharding.PartitionSpec("data", "context")
    _assert_grads_match(_reference("tiled", 0)[1], out)


@pytest.mark.slow
def test_context4_data2_ring_gradients_match_one_device():
    plan, out, _, _ = _sharded(dict(context=4, data=2, context_exchange="ring"), "blocked",
                               "tiled", 0)
    assert plan.context_settings().exchange == "ring"
    _assert_grads_match(_reference("tiled", 0)[1], out)


@pytest.mark.slow
def test_context2_expert2_data2_three_steps_match_one_device():
    mesh = dict(context=2, expert=2, data=2)
    _, want, ref_state, ref_metrics = _reference("reference", 3)
    plan, got, state, metrics = _sharded(mesh, "ep_all_to_all", "reference", 3)
    _assert_grads_match(want, got)
    for a, b in zip(ref_metrics, metrics, strict=True):
        for key in METRICS:
            assert rel(a[key], b[key]) <= 1e-5, (key, a[key], b[key])
        np.testing.assert_array_equal(a["expert_counts"], b["expert_counts"])
    for part in ("params", "biases"):
        paths = jax.tree_util.tree_flatten_with_path(ref_state[part])[0]
        for (path, a), b in zip(paths, jax.tree.leaves(state[part]), strict=True):
            assert rel(a, b) <= 1e-5, (part, jax.tree_util.keystr(path))
    # Expert weights are sharded over expert and their embed dim over context (ZeRO over it).
    gate = plan.state["params"]["moe_layers"]["mlp"]["gate_proj"].spec
    assert gate[1] == "expert" and gate[2] == "context"
