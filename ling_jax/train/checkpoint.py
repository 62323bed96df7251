"""Orbax checkpoints for the train loop: async saves, keep-N plus keep-every-K, crash-safe commits.

One step directory per checkpoint, `DIR/<step>/` with two items: `state` (the array pytree: params,
expert biases, optax state as is, RNG key data) and `meta` (JSON: the caller's meta dict and the data
iterator state). Orbax writes each step under `<step>.orbax-checkpoint-tmp*` and renames it on commit,
so a process killed at any moment leaves only complete step directories under their final names;
`latest_step()` additionally hides the step an async save is still writing.

Once a step is committed, process 0 adds a manifest (size and CRC-32 of every file, see
checkpoint_manifest); `restore` verifies it, and `newest_intact_step` finds the step to resume
from when the newest one was damaged after its commit. Orbax / tensorstore failures are reduced
to one line naming the step and the cause.

Restores onto any `abstract_state` (ShapeDtypeStructs, optionally sharded over a different mesh) after
checking that its key paths, shapes and dtypes match what was saved: orbax itself would silently
return the saved shape when the requested one differs.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ling_jax.orbax_errors import error_cause
from ling_jax.paths import absolute, is_url
from ling_jax.train.checkpoint_json import _from_json, _to_json
from ling_jax.train.checkpoint_manifest import CheckpointCorruptError, find_problem, write_manifest

__all__ = ["CheckpointCorruptError", "CheckpointStore"]

_STATE, _META = "state", "meta"
_TRASH = "to_delete"  # orbax renames retired steps here (atomic), we then remove them


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
        self._async = async_save
        policies = [ocp.checkpoint_managers.LatestN(keep)]
        if keep_every is not None:  # steps that are multiples of keep_every are never deleted
            policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # reclaim what a killed save left behind
            todelete_subdir=_TRASH,  # a kill mid-rmtree would leave a half step listed as complete
            create=True,
            # Sync saves are sealed in `save` itself.
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_quietly)
            if async_save
            else None,
        )
        self._unsealed: set[int] = set()  # steps saved here whose manifest is not written yet
        self._seal_lock = threading.Lock()
        # Explicit handlers: a fresh manager can then read item metadata before its first save.
        handlers = {_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._empty_trash()

    def _empty_trash(self) -> None:
        """Remove retired steps and the trash directory; only called while no save is in flight."""
        trash = self.directory / _TRASH
        if jax.process_index() == 0 and trash.is_dir():
            trash.rmtree()

    def _seal(self) -> None:
        """Write the manifest of each step saved here that orbax has committed since."""
        with self._seal_lock:
            for step in sorted(self._unsealed):
                step_dir = self.directory / str(step)
                if not ocp.step.is_path_finalized(step_dir):
                    continue
                if jax.process_index() == 0 and step_dir.is_dir():
                    write_manifest(step_dir, hashes=not is_url(self.directory))
                self._unsealed.discard(step)

    def _seal_quietly(self) -> None:
        """Orbax's post-commit hook (its writer thread): errors surface at the next `wait`."""
        try:
            self._seal()
        except OSError:
            pass

    def _wait(self) -> None:
        self._manager.wait_until_finished()
        self._seal()

    def save(
        self, step: int, state: Any, meta: dict, data_state: dict | None = None, *, force: bool = False
    ) -> None:
        """Start saving `step` (async); a step already saved is left as is unless `force` replaces it."""
        step = int(step)
        # Validated here, not in the writer thread.
        payload = {"meta": _to_json(meta, "meta"), "data_state": _to_json(data_state, "data_state")}
        # Orbax waits for the previous save too; waiting first makes all_steps() exact and raises its errors.
        self._wait()
        self._empty_trash()
        steps = self.all_steps()
        if step in steps:
            if not force:
                return
            self._manager.delete(step)
            self._empty_trash()
        elif steps and step < steps[-1]:
            raise ValueError(
                f"step {step} is older than the newest checkpoint {steps[-1]} in {self.directory}; "
                "use a fresh directory or delete the newer steps"
            )
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(payload)})
        with self._seal_lock:
            self._unsealed.add(step)
        # force=True bypasses orbax's save-decision policy, which would otherwise skip steps silently.
        if not self._manager.save(step, args=args, force=True):
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")
        if not self._async:
            self._seal()

    def all_steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending (an in-flight save is not listed)."""
        # Local disks: the final name appears only at commit (rename of the tmp dir); buckets: a commit file.
        finalized = lambda s: ocp.step.is_path_finalized(self.directory / str(s))
        return sorted(s for s in self._manager.all_steps() if finalized(s))

    def latest_step(self) -> int | None:
        """Newest committed step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def verify(self, step: int, *, hashes: bool = True) -> str | None:
        """None if committed `step` holds the bytes saved, else one line naming it and the damage."""
        self._wait()
        if step not in self.all_steps():
            return f"no complete checkpoint for step {step} in {self.directory}"
        problem = find_problem(self.directory / str(step), hashes=hashes)
        if problem is None:
            return None
        return f"checkpoint step {step} in {self.directory} is corrupt: {problem}"

    def newest_intact_step(self) -> tuple[int | None, str | None]:
        """(step to resume from, None or one line naming the damaged newer step(s) and the step used).

        (None, None) when there is no checkpoint; CheckpointCorruptError when none is intact.
        """
        steps = self.all_steps()
        problems = []
        for step in reversed(steps):
            problem = self.verify(step)
            if problem is None:
                if not problems:
                    return step, None
                more = f" (and {len(problems) - 1} newer damaged step(s))" if len(problems) > 1 else ""
                return step, f"{problems[0]}{more}; using step {step} instead"
            problems.append(problem)
        if not problems:
            return None, None
        raise CheckpointCorruptError(
            f"{problems[0]}; no older checkpoint is intact ({len(steps)} checked); "
            "move the directory aside to start over"
        )

    def _check_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise ValueError(f"no complete checkpoint in {self.directory}: nothing to restore")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise ValueError(f"no complete checkpoint for step {step} in {self.directory}; have {steps}")
        return step

    def _orbax(self, step: int, fn, *args, **kwargs) -> Any:
        """`fn(*args, **kwargs)` with orbax / tensorstore failures as one CheckpointCorruptError line."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # tensorstore raises bare Exception for failed chunk reads
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {self.directory} cannot be read: {error_cause(e)}"
            ) from None

    def restore(
        self, step: int | None = None, *, abstract_state: Any, verify: bool = True
    ) -> tuple[Any, dict, dict | None]:
        """(state, meta, data_state) of `step` (default: latest), laid out as `abstract_state`.

        With `verify` the step's files are first checked against its manifest
        (CheckpointCorruptError, one line, if they differ).
        """
        self._wait()  # a save of ours still in flight counts once committed
        step = self._check_step(step)
        if verify and (problem := self.verify(step)) is not None:
            raise CheckpointCorruptError(problem)
        saved = self._orbax(step, self._manager.item_metadata, step)
        if saved is None or _STATE not in saved or saved[_STATE] is None:
            raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory}: 'state' item missing")
        _check_matches(_leaf_specs(saved[_STATE].tree), _leaf_specs(abstract_state), step)
        args = ocp.args.Composite(
            **{_STATE: ocp.args.StandardRestore(abstract_state), _META: ocp.args.JsonRestore()}
        )
        restored = self._orbax(step, self._manager.restore, step, args=args)
        payload = self._payload(step, restored[_META])
        return restored[_STATE], payload["meta"], payload["data_state"]

    def _payload(self, step: int, raw: Any) -> dict:
        if not isinstance(raw, dict) or not {"meta", "data_state"} <= set(raw):
            raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory}: 'meta' malformed")
        return _from_json(raw)

    def read_meta(self, step: int) -> tuple[dict, dict | None]:
        """(meta, data_state) of a committed `step`, without reading its arrays."""
        self._wait()
        if step not in self.all_steps():
            raise ValueError(f"no complete checkpoint for step {step} in {self.directory}")
        args = ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
        restored = self._orbax(step, self._manager.restore, step, args=args)
        payload = self._payload(step, restored[_META])
        return payload["meta"], payload["data_state"]

    def wait(self) -> None:
        """Block until every started save is committed and sealed (raises if one failed)."""
        self._wait()

    def close(self) -> None:
        """Wait for saves, then release orbax's threads."""
        self._manager.close()
        self._seal()
        self._empty_trash()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
