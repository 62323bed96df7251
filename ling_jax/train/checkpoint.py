"""Orbax checkpoints for the train loop: async saves, keep-N plus keep-every-K, crash-safe commits.

One step directory per checkpoint, `DIR/<step>/` with two items: `state` (the array pytree: params,
expert biases, optax state as is, RNG key data) and `meta` (JSON: the caller's meta dict and the data
iterator state). Orbax writes each step under `<step>.orbax-checkpoint-tmp*` and renames it on commit,
so a process killed at any moment leaves only complete step directories under their final names;
`latest_step()` additionally hides the step an async save is still writing.

Restores onto any `abstract_state` (ShapeDtypeStructs, optionally sharded over a different mesh) after
checking that its key paths, shapes and dtypes match what was saved: orbax itself would silently
return the saved shape when the requested one differs.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ling_jax.paths import absolute

_STATE, _META = "state", "meta"
_TRASH = "to_delete"  # orbax renames retired steps here (atomic), we then remove them
_BYTES_TAG = "__base64__"  # JSON object {_BYTES_TAG: "..."} stands for a bytes value


def _to_json(obj: Any, where: str) -> Any:
    """Copy of `obj` with bytes base64-wrapped; ValueError naming the first value JSON cannot hold."""
    if isinstance(obj, bytes | bytearray):
        return {_BYTES_TAG: base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ValueError(f"{where}: checkpoint JSON needs string keys, got {list(obj)!r}")
        return {k: _to_json(v, f"{where}/{k}") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v, f"{where}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):  # numpy scalars (a logged loss, a step counter)
        return obj.item()
    raise ValueError(f"{where}: {type(obj).__name__} is not JSON-able; convert it to int/float/str/list/dict")


def _from_json(obj: Any) -> Any:
    """Inverse of `_to_json` (tuples come back as lists)."""
    if isinstance(obj, dict):
        if set(obj) == {_BYTES_TAG}:
            return base64.b64decode(obj[_BYTES_TAG])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _key_name(key: Any) -> str:
    """Dict key, NamedTuple field and sequence index all print as plain names ('opt/0/mu/w')."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _stored_spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) as stored on disk: orbax writes typed PRNG keys as their uint32 key data."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    return tuple(leaf.shape), np.dtype(leaf.dtype)


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{'a/b/c': (shape, dtype)} in flatten order for a tree of arrays or array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): _stored_spec(leaf) for path, leaf in leaves}


def _check_matches(saved: dict, wanted: dict, step: int) -> None:
    """ValueError naming the first key path whose presence, shape or dtype differs."""
    for path, (shape, dtype) in wanted.items():
        if path not in saved:
            raise ValueError(f"abstract_state has '{path}' but the checkpoint at step {step} does not")
        if saved[path] != (shape, dtype):
            raise ValueError(
                f"'{path}': checkpoint at step {step} holds shape {saved[path][0]} {saved[path][1]}, "
                f"abstract_state asks for {shape} {dtype}"
            )
    for path in saved:
        if path not in wanted:
            raise ValueError(f"the checkpoint at step {step} has '{path}' but abstract_state does not")


class CheckpointStore:
    """Saves and restores train states under one directory, with retention and async writes."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        keep_every: int | None = None,
        async_save: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (newest checkpoints kept), got {keep}")
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every must be None or >= 1, got {keep_every}")
        # Local or a bucket (gs://...); orbax refuses relative local paths.
        self.directory = absolute(directory)
        policies = [ocp.checkpoint_managers.LatestN(keep)]
        if keep_every is not None:  # steps that are multiples of keep_every are never deleted
            policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # reclaim what a killed save left behind
            todelete_subdir=_TRASH,  # a kill mid-rmtree would leave a half step listed as complete
            create=True,
        )
        # Explicit handlers: a fresh manager can then read item metadata before its first save.
        handlers = {_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._empty_trash()

    def _empty_trash(self) -> None:
        """Remove retired steps; only ever called while no orbax save is in flight."""
        trash = self.directory / _TRASH
        if jax.process_index() == 0 and trash.is_dir():
            for entry in trash.iterdir():
                entry.rmtree()

    def save(
        self, step: int, state: Any, meta: dict, data_state: dict | None = None, *, force: bool = False
    ) -> None:
        """Start saving `step` (async); a step already saved is left as is unless `force` replaces it."""
        step = int(step)
        # Validated here, not in the writer thread.
        payload = {"meta": _to_json(meta, "meta"), "data_state": _to_json(data_state, "data_state")}
        # Orbax waits for the previous save too; waiting first makes all_steps() exact and raises its errors.
        self._manager.wait_until_finished()
        self._empty_trash()
        steps = self.all_steps()
        if step in steps:
            if not force:
                return
            self._manager.delete(step)
        elif steps and step < steps[-1]:
            raise ValueError(
                f"step {step} is older than the newest checkpoint {steps[-1]} in {self.directory}; "
                "use a fresh directory or delete the newer steps"
            )
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(payload)})
        # force=True bypasses orbax's save-decision policy, which would otherwise skip steps silently.
        if not self._manager.save(step, args=args, force=True):
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")

    def all_steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending (an in-flight save is not listed)."""
        # Local disks: the final name appears only at commit (rename of the tmp dir); buckets: a commit file.
        finalized = lambda s: ocp.step.is_path_finalized(self.directory / str(s))
        return sorted(s for s in self._manager.all_steps() if finalized(s))

    def latest_step(self) -> int | None:
        """Newest committed step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def restore(self, step: int | None = None, *, abstract_state: Any) -> tuple[Any, dict, dict | None]:
        """(state, meta, data_state) of `step` (default: latest), laid out as `abstract_state`."""
        self._manager.wait_until_finished()  # a save of ours still in flight counts once committed
        steps = self.all_steps()
        if not steps:
            raise ValueError(f"no complete checkpoint in {self.directory}: nothing to restore")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise ValueError(f"no complete checkpoint for step {step} in {self.directory}; have {steps}")
        saved = self._manager.item_metadata(step)[_STATE]
        _check_matches(_leaf_specs(saved.tree), _leaf_specs(abstract_state), step)
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardRestore(abstract_state), _META: ocp.args.JsonRestore()}
        )
        restored = self._manager.restore(step, args=args)
        payload = _from_json(restored[_META])
        return restored[_STATE], payload["meta"], payload["data_state"]

    def read_meta(self, step: int) -> tuple[dict, dict | None]:
        """(meta, data_state) of a committed `step`, without reading its arrays."""
        self._manager.wait_until_finished()
        if step not in self.all_steps():
            raise ValueError(f"no complete checkpoint for step {step} in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
        payload = _from_json(restored[_META])
        return payload["meta"], payload["data_state"]

    def wait(self) -> None:
        """Block until every started save is committed (raises if one failed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for saves, then release orbax's threads."""
        self._manager.close()
        self._empty_trash()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
