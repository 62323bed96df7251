"""Per-step metrics to WORKDIR/metrics.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

SCALAR_KEYS = ("loss", "lm_loss", "mtp_loss", "z_loss", "lr", "grad_norm", "tokens_per_sec", "mfu",
               "load_max_min_ratio", "load_cv", "load_dead_experts", "reward", "accuracy",
               "heldout_accuracy", "response_length", "clip_fraction", "kl_old", "entropy")


def to_jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        arr = np.asarray(value)
        out[key] = arr.item() if arr.ndim == 0 else arr.tolist()
    return out


class MetricsLog:
    """Appends one JSON object per step; on resume, drops lines past the restored step."""

    def __init__(self, workdir: str | pathlib.Path, *, resume_step: int = 0, tensorboard: bool = True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
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

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
