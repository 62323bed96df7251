"""The final train state written as a model checkpoint (what `generate` and `export-hf` read)."""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

from etils import epath

from ling_jax.train.metrics_log import is_local, upload_tree
from ling_jax.train.state import model_state


def export_final_model(path: str | os.PathLike, state: dict, model_cfg,
                       tokenizer: Any = None) -> epath.Path:
    """The trained model as a model checkpoint (`ling-jax export-hf --checkpoint PATH` and
    `ling-jax generate --checkpoint PATH` read it) with the run's tokenizer.json beside it when the
    tokenizer can be saved; a gs:// path is written locally first, then copied."""
    from ling_jax.interop.model_checkpoint import atomic_output_dir, write_model_dir

    tree = model_state(state["params"], state["biases"])

    def write(tmp: pathlib.Path) -> None:
        write_model_dir(tmp, tree, model_cfg)
        if hasattr(tokenizer, "save"):
            tokenizer.save(tmp / "tokenizer.json")

    if is_local(path):
        with atomic_output_dir(path, overwrite=True) as tmp:
            write(pathlib.Path(tmp))
        return epath.Path(path)
    target = epath.Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        write(pathlib.Path(tmp))
        if target.exists():
            target.rmtree()
        upload_tree(pathlib.Path(tmp), target)
    return target
