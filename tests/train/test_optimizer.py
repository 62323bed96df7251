"""AdamW, mask and clipping vs a float64 NumPy AdamW; LR read-back; phase switch; validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ling_jax.train.optimizer import (
    current_lr,
    decay_mask,
    global_norm,
    make_optimizer,
    optimizer_step,
)
from ling_jax.train.schedules import make_schedule

SHAPES = {
    "embed": {"embedding": (11, 6)},
    "dense_layers": {"attn": {"q_proj": {"kernel": (2, 6, 8)}}, "mlp_norm": {"scale": (2, 6)}},
    "moe_layers": {
        "attn": {"q_proj": {"kernel": (3, 6, 8)}, "q_norm": {"scale": (3, 4)}},
        "moe": {"experts": {"gate_proj": (3, 4, 6, 5)}, "router": {"kernel": (3, 6, 4)}},
    },
    "final_norm": {"scale": (6,)},
    "lm_head": {"kernel": (6, 11)},
    "mtp": {"eh_proj": {"bias_like": (6,)}},
}
# Decay only >= 2-D leaves that are not norm 'scale' weights ('scale' leaves with a layer axis
# are 2-D, yet must not decay).
DECAYED = {
    "embed/embedding",
    "dense_layers/attn/q_proj/kernel",
    "moe_layers/attn/q_proj/kernel",
    "moe_layers/moe/experts/gate_proj",
    "moe_layers/moe/router/kernel",
    "lm_head/kernel",
}


def _tree(seed, scale=1.0):
    leaves, treedef = jax.tree_util.tree_flatten(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=s).astype(np.float32) * scale for s in leaves]
    return jax.tree_util.tree_unflatten(treedef, arrays)


def _paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


def test_decay_mask_excludes_norm_scales_and_vectors():
    mask = _paths(decay_mask(_tree(0)))
    assert {p for p, m in mask.items() if m} == DECAYED
    # Works on abstract params too (the optimizer may be initialised from shapes).
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _tree(0))
    assert _paths(decay_mask(abstract)) == mask


def test_global_norm_matches_float64_and_accumulates_in_float32():
    tree = _tree(1, scale=3.0)
    want = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in jax.tree_util.tree_leaves(tree)))
    assert float(global_norm(tree)) == pytest.approx(want, rel=1e-6)
    # bf16 leaves: the norm of the bf16 values, summed in float32 (bf16 sums would be ~1e-2 off).
    big = {"w": jnp.asarray(np.random.default_rng(2).normal(size=(4096,)), jnp.bfloat16)}
    want_bf16 = np.sqrt(np.sum(np.asarray(big["w"], np.float64) ** 2))
    assert float(global_norm(big)) == pytest.approx(want_bf16, rel=1e-6)
    assert global_norm(big).dtype == jnp.float32
    assert float(global_norm({})) == 0.0


def _numpy_adamw(params, grads_seq, lrs, b1, b2, eps, wd, max_norm):
    """Reference AdamW (decoupled decay, bias-corrected) in float64 after global-norm clipping."""
    flat = {k: np.float64(v) for k, v in _paths(params).items()}
    mu = {k: np.zeros_like(v) for k, v in flat.items()}
    nu = {k: np.zeros_like(v) for k, v in flat.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs, strict=True), start=1):
        g = {k: np.float64(v) for k, v in _paths(grads).items()}
        norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
        scale = min(1.0, max_norm / norm)
        for k in flat:
            gk = g[k] * scale
            mu[k] = b1 * mu[k] + (1 - b1) * gk
            nu[k] = b2 * nu[k] + (1 - b2) * gk**2
            step = (mu[k] / (1 - b1**t)) / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
            if k in DECAYED:
                step = step + wd * flat[k]
            flat[k] = flat[k] - lr * step
    return flat


@pytest.fixture(scope="module")
def five_steps():
    """Five jitted AdamW steps with warmup, clipping always active (grad norms >> 1)."""
    sched_cfg = dict(kind="wsm", peak_lr=3e-2, warmup_steps=3, init_lr=1e-3)
    opt_cfg = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0)
    opt = make_optimizer(opt_cfg, make_schedule(sched_cfg))
    params = _tree(3)
    grads_seq = [_tree(10 + i, scale=2.0) for i in range(5)]
    state = opt.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return jax.tree_util.tree_map(jnp.add, params, updates), state

    p, lrs_read = params, []
    for grads in grads_seq:
        p, state = step(p, state, grads)
        lrs_read.append(float(current_lr(state)))
    return dict(params=params, grads=grads_seq, final=p, state=state, lrs=lrs_read)


def test_adamw_matches_numpy_reference(five_steps):
    lrs = [1e-3 + (3e-2 - 1e-3) * min(s, 3) / 3 for s in range(5)]
    want = _numpy_adamw(five_steps["params"], five_steps["grads"], lrs, 0.9, 0.95, 1e-8, 0.1, 1.0)
    got = _paths(five_steps["final"])
    for k, v in want.items():
        np.testing.assert_allclose(np.float64(got[k]), v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_current_lr_reports_the_lr_of_the_last_update(five_steps):
    want = [1e-3 + (3e-2 - 1e-3) * min(s, 3) / 3 for s in range(5)]
    np.testing.assert_allclose(five_steps["lrs"], want, rtol=1e-6)
    assert int(optimizer_step(five_steps["state"])) == 5


def test_norm_scales_are_not_decayed_when_gradients_vanish():
    # Zero gradients: Adam's step is 0, so only weight decay moves params: p -> p(1 - lr*wd).
    opt = make_optimizer({"weight_decay": 0.5}, make_schedule({"kind": "constant", "peak_lr": 0.1}))
    params = _tree(4)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = jax.jit(opt.update)(zeros, opt.init(params), params)
    for k, u in _paths(updates).items():
        want = -0.1 * 0.5 * _paths(params)[k] if k in DECAYED else np.zeros_like(u)
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, atol=1e-12, err_msg=k)


def test_new_phase_reuses_the_state_of_the_previous_one(five_steps):
    # A mid-training phase builds a new optimizer (new schedule); the old state must fit it.
    new_sched = make_schedule(dict(kind="wsm", peak_lr=5e-2, warmup_steps=2, start_step=5))
    opt2 = make_optimizer({}, new_sched)
    fresh = opt2.init(five_steps["params"])
    struct = jax.tree_util.tree_structure
    assert struct(fresh) == struct(five_steps["state"])
    update = jax.jit(opt2.update)
    _, state = update(five_steps["grads"][0], five_steps["state"], five_steps["final"])
    assert float(current_lr(state)) == pytest.approx(0.0)  # step 5 = the new phase's first step
    _, state = update(five_steps["grads"][1], state, five_steps["final"])
    assert float(current_lr(state)) == pytest.approx(2.5e-2, rel=1e-6)


def test_no_clipping_keeps_the_state_layout():
    sched = make_schedule({"kind": "constant", "peak_lr": 1e-3})
    clipped = make_optimizer({}, sched).init(_tree(0))
    unclipped = make_optimizer({"max_grad_norm": None}, sched).init(_tree(0))
    assert jax.tree_util.tree_structure(clipped) == jax.tree_util.tree_structure(unclipped)


def test_mu_dtype_bfloat16():
    sched = make_schedule({"kind": "constant", "peak_lr": 1e-3})
    state = make_optimizer({"mu_dtype": "bfloat16"}, sched).init(_tree(0))
    mus = [x for x in jax.tree_util.tree_leaves(state) if getattr(x, "dtype", None) == jnp.bfloat16]
    assert len(mus) == len(jax.tree_util.tree_leaves(_tree(0)))


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"b1": 1.0}, "optimizer.b1"),
        ({"b2": -0.1}, "optimizer.b2"),
        ({"eps": 0.0}, "optimizer.eps"),
        ({"weight_decay": -0.1}, "optimizer.weight_decay"),
        ({"max_grad_norm": 0.0}, "optimizer.max_grad_norm"),
        ({"mu_dtype": "float8"}, "optimizer.mu_dtype"),
    ],
)
def test_bad_optimizer_configs_name_the_field(cfg, field):
    sched = make_schedule({"kind": "constant", "peak_lr": 1e-3})
    with pytest.raises(ValueError) as err:
        make_optimizer(cfg, sched)
    assert field in str(err.value)


def test_current_lr_needs_an_injected_state():
    with pytest.raises(ValueError, match="make_optimizer"):
        current_lr({"count": jnp.zeros(())})
