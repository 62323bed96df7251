"""Train checkpoints damaged after their commit: detected against the manifest, reported in one
line naming the step, the previous intact step used instead; nothing intact is lost."""

from __future__ import annotations

import json
import shutil

import pytest

import ling_jax.train.checkpoint as checkpoint_module
from ling_jax.train.checkpoint import CheckpointStore
from tests.reliability.hostile import (
    assert_message_one_line,
    flip_bytes,
    largest_file,
    truncate,
)
from tests.train.test_checkpoint import abstract_of, assert_bitwise_equal, make_state

MANIFEST = "ling_manifest.json"


def _corrupt_error() -> type:
    """The store's one-line error class (looked up late: each test must fail on its own where
    the store lacks it)."""
    return checkpoint_module.CheckpointCorruptError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Steps 10 and 20 saved asynchronously (the train loop's mode) and closed."""
    directory = tmp_path_factory.mktemp("pristine") / "checkpoints"
    with CheckpointStore(directory, keep=3) as store:
        store.save(10, make_state(10), {"step": 10})
        store.save(20, make_state(20), {"step": 20})
    return directory


@pytest.fixture
def copy(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "checkpoints")


def _data_file(step_dir):
    return largest_file(step_dir / "state")


DAMAGE = {
    "flipped_bytes": lambda s: flip_bytes(_data_file(s), 1000),
    "truncated_data": lambda s: truncate(_data_file(s), 100),
    "state_item_deleted": lambda s: shutil.rmtree(s / "state"),
    "meta_truncated": lambda s: truncate(s / "meta" / "metadata", 3),
    "state_metadata_garbled": lambda s: (s / "state" / "_METADATA").write_text("{"),
    "data_file_deleted": lambda s: _data_file(s).unlink(),
    "manifest_garbled": lambda s: (s / MANIFEST).write_text("[1, 2"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_step_falls_back_to_previous(copy, damage):
    DAMAGE[damage](copy / "20")
    with CheckpointStore(copy) as store:
        problem = store.verify(20)
        assert problem is not None
        assert_message_one_line(problem, "step 20", str(copy))
        step, note = store.newest_intact_step()
        assert step == 10
        assert_message_one_line(note, "step 20", "using step 10")
        with pytest.raises(_corrupt_error()) as info:
            store.restore(20, abstract_state=abstract_of(make_state(20)))
        assert_message_one_line(str(info.value), "step 20")
        state, meta, _ = store.restore(step, abstract_state=abstract_of(make_state(10)))
    assert_bitwise_equal(state, make_state(10))
    assert meta == {"step": 10}


def test_intact_steps_verify_and_restore(copy):
    with CheckpointStore(copy) as store:
        assert store.verify(10) is None and store.verify(20) is None
        assert store.newest_intact_step() == (20, None)
        state, _, _ = store.restore(abstract_state=abstract_of(make_state(20)))
    assert_bitwise_equal(state, make_state(20))
    recorded = json.loads((copy / "20" / MANIFEST).read_text())["files"]
    on_disk = {str(p.relative_to(copy / "20")) for p in (copy / "20").rglob("*")
               if p.is_file() and p.name != MANIFEST}
    assert set(recorded) == on_disk  # every file of the step is covered


def test_step_killed_before_its_manifest_is_still_used(copy):
    """A kill between orbax's commit and the manifest leaves a complete step without one."""
    (copy / "20" / MANIFEST).unlink()
    with CheckpointStore(copy) as store:
        assert store.newest_intact_step() == (20, None)
        state, _, _ = store.restore(abstract_state=abstract_of(make_state(20)))
    assert_bitwise_equal(state, make_state(20))


@pytest.mark.parametrize("damage", ["truncated_data", "state_item_deleted", "meta_truncated"])
def test_damage_without_manifest_is_one_line(copy, damage):
    """Orbax / tensorstore failures (checkpoints saved before manifests) reduced to their cause."""
    (copy / "20" / MANIFEST).unlink()
    DAMAGE[damage](copy / "20")
    with CheckpointStore(copy) as store, pytest.raises(_corrupt_error()) as info:
        store.restore(20, abstract_state=abstract_of(make_state(20)))
    assert_message_one_line(str(info.value), "step 20", str(copy))
    assert "tensorstore_spec" not in str(info.value) and "'driver'" not in str(info.value)


def test_all_steps_damaged_is_one_line_error(copy):
    flip_bytes(_data_file(copy / "20"), 1000)
    truncate(_data_file(copy / "10"), 10)
    with CheckpointStore(copy) as store, pytest.raises(_corrupt_error()) as info:
        store.newest_intact_step()
    assert_message_one_line(str(info.value), "step 20", "no older checkpoint is intact")
    assert sorted(p.name for p in copy.iterdir()) == ["10", "20"]  # nothing deleted


def test_no_checkpoint_is_no_step(tmp_path):
    with CheckpointStore(tmp_path / "empty") as store:
        assert store.newest_intact_step() == (None, None)


@pytest.mark.parametrize("async_save", [True, False])
def test_every_saved_step_is_sealed_and_no_trash_dir_is_left(tmp_path, async_save):
    with CheckpointStore(tmp_path, keep=1, async_save=async_save) as store:
        for step in (1, 2, 3):
            store.save(step, make_state(step), {"step": step})
        store.wait()
        assert (tmp_path / "3" / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]  # no empty to_delete/


def test_size_only_manifest_for_buckets_still_catches_truncation(copy):
    """Buckets record sizes only (hashing would read every step back over the network)."""
    from etils import epath

    from ling_jax.train.checkpoint_manifest import write_manifest

    write_manifest(epath.Path(copy / "20"), hashes=False)
    recorded = json.loads((copy / "20" / MANIFEST).read_text())["files"]
    assert all(crc is None for _, crc in recorded.values())
    truncate(_data_file(copy / "20"), 100)
    with CheckpointStore(copy) as store:
        step, note = store.newest_intact_step()
    assert step == 10
    assert_message_one_line(note, "step 20", "100 bytes")
