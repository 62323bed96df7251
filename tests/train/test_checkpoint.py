"""CheckpointStore: round trips bit for bit, retention, async saves, kill -9 safety, restore onto a mesh."""

from __future__ import annotations

import os
import pathlib
import select
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ling_jax.train.checkpoint import CheckpointStore

REPO = pathlib.Path(__file__).resolve().parents[2]
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def make_state(step: int, n: int = 64) -> dict:
    """A train-state-like tree whose every value is a function of `step` (recomputable in any process)."""
    rng = np.random.default_rng(step)
    params = {
        "embed": jnp.asarray(rng.standard_normal((n, 2 * n)), jnp.float32),
        "layers": {"0": {"w": jnp.asarray(rng.standard_normal((2 * n, n)), jnp.bfloat16)}},
        "final_norm": {"scale": jnp.asarray(rng.standard_normal((n,)), jnp.float32)},
    }
    opt_state = optax.adamw(1e-3).init(params)  # tuple of NamedTuples, passed to the store as is
    opt_state = jax.tree.map(lambda x: x + jnp.asarray(step, x.dtype), opt_state)
    return {
        "params": params,
        "expert_bias": jnp.asarray(rng.standard_normal((4, 8)), jnp.float32),
        "opt_state": opt_state,
        "rng": jax.random.key_data(jax.random.key(step)),  # uint32
        "tokens_seen": jnp.asarray(rng.integers(-(2**31), 2**31 - 1, (3,)), jnp.int32),
    }


def abstract_of(state: dict, sharding_for=None) -> dict:
    """ShapeDtypeStructs of `state`, with `sharding_for(shape)` as sharding when given."""

    def spec(x):
        sharding = sharding_for(x.shape) if sharding_for else None
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(spec, state)


def assert_bitwise_equal(got, want) -> None:
    """Same tree structure (NamedTuples included) and identical bytes in every leaf."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert (g.dtype, g.shape) == (w.dtype, w.shape), jax.tree_util.keystr(path)
        assert g.tobytes() == w.tobytes(), jax.tree_util.keystr(path)


def test_round_trip_is_bitwise_with_optax_state_and_bytes(tmp_path):
    state = make_state(7)
    meta = {
        "phase": 1,
        "step_in_phase": 3,
        "model": {"hidden": 64, "rope": [1e4, 6e5]},
        "loss": np.float32(2.5),
    }
    data_state = {"iter": b"\x00\xffgrain\n", "nested": [{"pos": 5, "blob": bytearray(b"\x01\x02")}]}
    with CheckpointStore(tmp_path) as store:
        store.save(7, state, meta, data_state)
        store.wait()
        got, got_meta, got_data = store.restore(abstract_state=abstract_of(state))
    assert isinstance(got["opt_state"][0], optax.ScaleByAdamState)
    assert_bitwise_equal(got, state)
    assert got_meta == {
        "phase": 1,
        "step_in_phase": 3,
        "model": {"hidden": 64, "rope": [1e4, 6e5]},
        "loss": 2.5,
    }
    assert got_data == {"iter": b"\x00\xffgrain\n", "nested": [{"pos": 5, "blob": b"\x01\x02"}]}


def test_typed_prng_key_round_trip(tmp_path):
    state = {"rng": jax.random.split(jax.random.key(11), 3), "w": jnp.arange(5, dtype=jnp.float32)}
    with CheckpointStore(tmp_path) as store:
        store.save(1, state, {})
        got, _, _ = store.restore(abstract_state=jax.eval_shape(lambda: state))
    assert jax.dtypes.issubdtype(got["rng"].dtype, jax.dtypes.prng_key)
    assert_bitwise_equal(jax.random.key_data(got["rng"]), jax.random.key_data(state["rng"]))
    assert_bitwise_equal(got["w"], state["w"])


def test_no_data_state_and_sync_mode(tmp_path):
    store = CheckpointStore(tmp_path, async_save=False)
    store.save(1, make_state(1), {"a": 1})
    assert store.latest_step() == 1  # a sync save is committed when save returns
    got, meta, data = store.restore(1, abstract_state=abstract_of(make_state(0)))
    assert_bitwise_equal(got, make_state(1))
    assert (meta, data) == ({"a": 1}, None)
    store.close()


@pytest.mark.parametrize("async_save", [True, False])
def test_keep_newest_plus_every_k(tmp_path, async_save):
    store = CheckpointStore(tmp_path, keep=2, keep_every=4, async_save=async_save)
    for step in range(1, 11):
        store.save(step, make_state(step, n=8), {"step": step})
    store.wait()
    assert store.all_steps() == [4, 8, 9, 10]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["10", "4", "8", "9"]
    store.close()
    reopened = CheckpointStore(tmp_path, keep=2, keep_every=4)
    assert reopened.all_steps() == [4, 8, 9, 10]
    state, meta, _ = reopened.restore(4, abstract_state=abstract_of(make_state(0, n=8)))
    assert_bitwise_equal(state, make_state(4, n=8))
    assert meta == {"step": 4}


def test_async_saves_back_to_back_are_never_skipped(tmp_path):
    big = 1_000_000  # 4 MB per float32 leaf: each write outlasts the next save() call
    make = lambda s: {"w": jnp.full((big,), s, jnp.float32), "v": jnp.arange(big, dtype=jnp.int32) * s}
    store = CheckpointStore(tmp_path, keep=10)
    store.save(1, make(1), {"step": 1})
    assert store.latest_step() is None  # the in-flight save is not reported as complete
    for step in range(2, 7):
        store.save(step, make(step), {"step": step})
    store.wait()
    assert store.all_steps() == [1, 2, 3, 4, 5, 6]
    for step in store.all_steps():
        got, meta, _ = store.restore(step, abstract_state=abstract_of(make(0)))
        assert_bitwise_equal(got, make(step))
        assert meta == {"step": step}
    store.close()


def test_same_step_twice_is_a_noop_unless_forced(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(3, make_state(3), {"v": "first"})
    store.save(3, make_state(4), {"v": "second"})  # no-op, even while the first is in flight
    store.wait()
    got, meta, _ = store.restore(3, abstract_state=abstract_of(make_state(0)))
    assert_bitwise_equal(got, make_state(3))
    assert meta == {"v": "first"}
    store.save(3, make_state(4), {"v": "forced"}, force=True)
    store.wait()
    got, meta, _ = store.restore(3, abstract_state=abstract_of(make_state(0)))
    assert_bitwise_equal(got, make_state(4))
    assert meta == {"v": "forced"}
    with pytest.raises(ValueError, match="step 2 is older than the newest checkpoint 3"):
        store.save(2, make_state(2), {})
    store.close()


def test_restore_onto_a_mesh_of_8_devices(tmp_path):
    state = make_state(5)
    with CheckpointStore(tmp_path) as store:
        store.save(5, state, {})  # arrays on one device
    mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    P = jax.sharding.PartitionSpec
    specs = {2: P("a", "b"), 1: P("a")}  # every dim here is divisible by 4 / 2; scalars replicated

    def sharding_for(shape):
        spec = specs.get(len(shape), P()) if all(d % 4 == 0 for d in shape) else P()
        return jax.sharding.NamedSharding(mesh, spec)

    abstract = abstract_of(state, sharding_for)
    got, _, _ = CheckpointStore(tmp_path).restore(abstract_state=abstract)
    assert_bitwise_equal(got, state)
    for leaf, want in zip(jax.tree.leaves(got), jax.tree.leaves(abstract), strict=True):
        assert leaf.sharding == want.sharding
    assert len(got["params"]["embed"].addressable_shards) == 8
    assert got["params"]["embed"].addressable_shards[0].data.shape == (16, 64)


def test_errors_name_the_directory_and_key_path(tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(ValueError, match=f"no complete checkpoint in {empty}"):
        CheckpointStore(empty).restore(abstract_state={})
    store = CheckpointStore(tmp_path / "run")
    state = make_state(1)
    store.save(1, state, {})
    store.wait()
    abstract = abstract_of(state)
    missing = {**abstract, "params": {k: v for k, v in abstract["params"].items() if k != "final_norm"}}
    with pytest.raises(ValueError, match="step 1 has 'params/final_norm/scale' but abstract_state does not"):
        store.restore(abstract_state=missing)
    extra = {**abstract, "new_bias": jax.ShapeDtypeStruct((2,), jnp.float32)}
    with pytest.raises(ValueError, match="abstract_state has 'new_bias' but the checkpoint at step 1"):
        store.restore(abstract_state=extra)
    wrong_shape = abstract_of(make_state(1, n=32))
    with pytest.raises(
        ValueError, match=r"'opt_state/0/mu/embed': .* shape \(64, 128\) float32, .* \(32, 64\)"
    ):
        store.restore(abstract_state=wrong_shape)
    with pytest.raises(ValueError, match="no complete checkpoint for step 9"):
        store.restore(9, abstract_state=abstract)
    with pytest.raises(ValueError, match="meta/model/act: function is not JSON-able"):
        store.save(2, state, {"model": {"act": lambda x: x}})
    with pytest.raises(ValueError, match="data_state/0: checkpoint JSON needs string keys"):
        store.save(2, state, {}, {"0": {1: "a"}})
    with pytest.raises(ValueError, match="keep must be >= 1"):
        CheckpointStore(tmp_path / "x", keep=0)
    store.close()


_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from ling_jax.train.checkpoint import CheckpointStore
from tests.train.test_checkpoint import make_state
store = CheckpointStore(sys.argv[1], keep=2)
step = (store.latest_step() or 0) + 1
store.save(step, make_state(step, n=512), {"step": step}, {"pos": b"at %d" % step})
store.wait()
print("ready", step, flush=True)
while True:  # back-to-back async saves: a write is in flight almost all the time
    step += 1
    store.save(step, make_state(step, n=512), {"step": step}, {"pos": b"at %d" % step})
"""


def _kill_child_after(directory: pathlib.Path, delay: float | None) -> None:
    """Run the saving child; SIGKILL it `delay` s after its first commit (None: once a write is seen)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    argv = [sys.executable, "-c", _CHILD, str(directory), str(REPO)]
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([child.stdout], [], [], 120)[0], "child did not start saving within 120 s"
        assert child.stdout.readline().startswith("ready"), "child failed before its first save"
        if delay is None:
            while not any(TMP_SUFFIX in p.name for p in directory.iterdir()):
                time.sleep(0.001)
        else:
            time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_kill_9_at_any_moment_leaves_the_latest_checkpoint_restorable(tmp_path):
    abstract = abstract_of(make_state(0, n=512))
    previous, crash_path_kills = 0, 0
    for delay in (0.3, 0.6, 1.0, None):
        _kill_child_after(tmp_path, delay)
        trash = tmp_path / "to_delete"
        crash_path_kills += any(TMP_SUFFIX in p.name for p in tmp_path.iterdir()) or (
            trash.is_dir() and any(trash.iterdir())
        )
        store = CheckpointStore(tmp_path, keep=2)
        latest = store.latest_step()
        assert latest is not None and latest > previous
        for step in store.all_steps():  # every listed step restores exactly what was saved for it
            state, meta, data = store.restore(step, abstract_state=abstract)
            assert_bitwise_equal(state, make_state(step, n=512))
            assert (meta, data) == ({"step": step}, {"pos": b"at %d" % step})
        store.close()
        assert not any(TMP_SUFFIX in p.name for p in tmp_path.iterdir())  # a reopened store cleans up
        previous = latest
    assert crash_path_kills >= 1, "no kill landed mid-save or mid-retire: the crash path went untested"
