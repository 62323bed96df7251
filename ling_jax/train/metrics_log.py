"""Per-step metrics to WORKDIR/metrics.jsonl and TensorBoard event files; local or gs:// workdirs.

A local workdir is written in place. Object stores (gs://...) cannot append, so for them the log
keeps a local staging directory (metrics.jsonl, tensorboard/, plots) and `sync()` copies it to the
workdir through etils.epath; the loop syncs at every checkpoint save and at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from etils import epath

SCALAR_KEYS = ("loss", "lm_loss", "mtp_loss", "z_loss", "lr", "grad_norm", "tokens_per_sec", "mfu",
               "load_max_min_ratio", "load_cv", "load_dead_experts", "ep_dropped_tokens", "reward",
               "accuracy", "heldout_accuracy", "heldout_tokens", "response_length", "clip_fraction",
               "kl_old", "entropy", "reward_code_syntax", "reward_code_function",
               "reward_code_aesthetics")
METRICS_FILE = "metrics.jsonl"


def is_local(path: str | os.PathLike) -> bool:
    """True for a local filesystem path; False for URIs such as gs://bucket/run."""
    return "://" not in os.fspath(path)


def upload_tree(local_dir: pathlib.Path, target: str | os.PathLike,
                synced: dict[str, tuple[int, int]] | None = None) -> None:
    """Copy the files under `local_dir` to `target` (any etils.epath, e.g. gs://). With `synced`
    (relative path → (size, mtime_ns) when last copied), unchanged files are skipped and the
    copies are recorded there."""
    target = epath.Path(target)
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        stat = path.stat()
        if synced is not None and synced.get(rel) == (stat.st_size, stat.st_mtime_ns):
            continue
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
        if synced is not None:
            synced[rel] = (stat.st_size, stat.st_mtime_ns)


def to_jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        arr = np.asarray(value)
        out[key] = arr.item() if arr.ndim == 0 else arr.tolist()
    return out


def _kept_lines(text: str, resume_step: int) -> str:
    """The lines of a metrics file up to `resume_step` (a resumed run rewrites the rest)."""
    kept = [line for line in text.splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= resume_step]
    return "".join(line + "\n" for line in kept)


@contextlib.contextmanager
def _naming(path: pathlib.Path) -> Iterator[None]:
    """A write error on an open file (a full disk) names the file, as open() errors do."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e


class MetricsLog:
    """Appends one JSON object per step; on resume, drops lines past the restored step.

    `stage_locally` (default: the workdir is not local) writes to a local staging directory that
    `sync()` copies to the workdir.
    """

    def __init__(self, workdir: str | os.PathLike, *, resume_step: int = 0,
                 tensorboard: bool = True, stage_locally: bool | None = None):
        self.workdir = epath.Path(workdir)
        staged = not is_local(workdir) if stage_locally is None else stage_locally
        self.local_dir = (pathlib.Path(tempfile.mkdtemp(prefix="ling-jax-metrics-")) if staged
                          else pathlib.Path(os.fspath(workdir)))
        self._staged = staged
        self._synced: dict[str, tuple[int, int]] = {}  # file → (size, mtime_ns) when last copied
        self.path = self.local_dir / METRICS_FILE
        self.local_dir.mkdir(parents=True, exist_ok=True)
        source = self.workdir / METRICS_FILE
        if source.exists():  # resume: the workdir's copy is the reference (staged: fetch it)
            self.path.write_text(_kept_lines(source.read_text(), resume_step))
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.local_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        with _naming(self.path):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            extra = [k for k in record if k.startswith(("fp8/min_cosine", "fp8/max_underflow"))]
            for key in (*SCALAR_KEYS, *extra):
                value = record.get(key)
                if isinstance(value, list):
                    value = float(np.max(value)) if key == "load_max_min_ratio" else float(np.mean(value))
                if value is not None:
                    self._tb.add_scalar(f"{record['phase']}/{key}", value, record["step"])

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far (from the local copy)."""
        self._file.flush()
        return _parse(self.path.read_text())

    def sync(self) -> None:
        """Copy new or changed staged files to the workdir (no-op for a local workdir)."""
        if not self._file.closed:
            with _naming(self.path):
                self._file.flush()
        if self._tb is not None:
            self._tb.flush()
        if self._staged:
            upload_tree(self.local_dir, self.workdir, self._synced)

    def close(self) -> None:
        with _naming(self.path):
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self.sync()
        if self._staged:
            shutil.rmtree(self.local_dir, ignore_errors=True)


def _parse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of WORKDIR/metrics.jsonl (local or gs://)."""
    return _parse((epath.Path(workdir) / METRICS_FILE).read_text())
