"""Workdir paths through etils.epath (what gs:// runs use): checkpoints, metadata, metrics staging.

No network: the remote case is exercised with a local epath target and `stage_locally=True`,
the code path a gs:// workdir takes (write locally, copy with epath on sync).
"""

from __future__ import annotations

import json

import numpy as np
from etils import epath

from ling_jax.train.checkpoint import CheckpointStore
from ling_jax.train.metrics_log import MetricsLog, is_local, read_metrics
from tests.train.test_checkpoint import abstract_of, assert_bitwise_equal, make_state


def _record(step: int) -> dict:
    return {"phase": "pretrain", "step": step, "loss": 10.0 / step, "lr": 1e-3,
            "expert_counts": [[step, 2 * step]]}


def test_is_local_and_gs_paths_keep_their_scheme():
    assert is_local("/tmp/run") and is_local(epath.Path("/tmp/run")) and is_local("runs/x")
    assert not is_local("gs://bucket/runs/x")
    assert str(epath.Path("gs://bucket/runs") / "checkpoints") == "gs://bucket/runs/checkpoints"


def test_checkpoint_store_through_an_epath_directory(tmp_path):
    directory = epath.Path(tmp_path) / "run" / "checkpoints"
    state = make_state(3)
    with CheckpointStore(directory, async_save=True) as store:
        store.save(3, state, {"phase_index": 0, "step_in_phase": 3}, {"pos": 17})
        store.wait()
        assert store.read_meta(3) == ({"phase_index": 0, "step_in_phase": 3}, {"pos": 17})
        got, meta, data = store.restore(abstract_state=abstract_of(make_state(0)))
    assert_bitwise_equal(got, state)
    assert (meta["step_in_phase"], data) == (3, {"pos": 17})
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()


def test_staged_metrics_sync_to_the_workdir_and_resume_from_it(tmp_path):
    workdir = epath.Path(tmp_path) / "remote_like"
    log = MetricsLog(workdir, stage_locally=True)
    assert log.local_dir != tmp_path / "remote_like"
    for step in (1, 2, 3):
        log.write(_record(step))
    assert not (workdir / "metrics.jsonl").exists()  # nothing copied before a sync
    log.sync()
    assert read_metrics(workdir) == [_record(s) for s in (1, 2, 3)]
    log.write(_record(4))
    assert [r["step"] for r in log.records()] == [1, 2, 3, 4]
    staging = log.local_dir
    log.close()
    assert not staging.exists()  # the staging copy goes once synced
    assert [r["step"] for r in read_metrics(str(workdir))] == [1, 2, 3, 4]
    events = list((tmp_path / "remote_like" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0

    # Resume after step 2: the workdir's file is fetched and cut at the checkpoint.
    log = MetricsLog(workdir, resume_step=2, stage_locally=True, tensorboard=False)
    assert [r["step"] for r in log.records()] == [1, 2]
    log.write(_record(3) | {"loss": 0.5})
    log.close()
    got = read_metrics(workdir)
    assert [r["step"] for r in got] == [1, 2, 3] and got[-1]["loss"] == 0.5


def test_local_metrics_are_written_in_place(tmp_path):
    log = MetricsLog(epath.Path(tmp_path), tensorboard=False)
    assert log.local_dir == tmp_path
    log.write(_record(1) | {"ep_dropped_tokens": 0, "x": np.float32(1.5).item()})
    # a local file is readable at once, without sync
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["ep_dropped_tokens"] == 0 and line["x"] == 1.5
    log.close()
