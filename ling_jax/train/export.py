"""The final train state written as a model checkpoint (what `generate` and `export-hf` read)."""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

import jax
from etils import epath

from ling_jax.train import multihost
from ling_jax.train.metrics_log import is_local, upload_tree
from ling_jax.train.state import model_state


def export_final_model(path: str | os.PathLike, state: dict, model_cfg,
                       tokenizer: Any = None) -> epath.Path:
    """The trained model as a model checkpoint (`ling-jax export-hf --checkpoint PATH` and
    `ling-jax generate --checkpoint PATH` read it) with the run's tokenizer.json beside it when the
    tokenizer can be saved; a gs:// path is written locally first, then copied."""
    from ling_jax.interop.model_checkpoint import atomic_output_dir, write_model_dir

    tree = model_state(state["params"], state["biases"])
    if jax.process_count() > 1:
        return _export_multiprocess(epath.Path(path), tree, model_cfg, tokenizer)

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


def _export_multiprocess(target: epath.Path, tree: dict, model_cfg, tokenizer: Any) -> epath.Path:
    """Every process writes its shards of the (sharded) state into TARGET.partial, process 0 the
    config and tokenizer; then process 0 renames it to TARGET (local or gs:// alike)."""
    import orbax.checkpoint as ocp

    from ling_jax.interop.model_checkpoint import MODEL_CONFIG_FILE, MODEL_STATE_DIR, config_to_json

    primary = jax.process_index() == 0
    partial = target.parent / f"{target.name}.partial"
    if primary:
        if partial.exists():
            partial.rmtree()
        partial.mkdir(parents=True)
        (partial / MODEL_CONFIG_FILE).write_text(config_to_json(model_cfg))
        if hasattr(tokenizer, "save") and is_local(partial):
            tokenizer.save(pathlib.Path(os.fspath(partial)) / "tokenizer.json")
    multihost.barrier("final_model_start")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(partial / MODEL_STATE_DIR, tree)
        checkpointer.wait_until_finished()
    multihost.barrier("final_model_written")
    if primary:
        if target.exists():
            target.rmtree()
        partial.rename(target)
    multihost.barrier("final_model_done")
    return target
