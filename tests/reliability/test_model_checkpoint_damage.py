"""Model checkpoints (import-hf / final models) with damaged files: one line naming the state
directory, never an AttributeError or a tensorstore dump."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from ling_jax.interop.model_checkpoint import (
    MODEL_STATE_DIR,
    ModelCheckpointError,
    atomic_output_dir,
    load_model,
    write_model_dir,
)
from ling_jax.model.transformer import LingForCausalLM
from tests.reliability.hostile import assert_message_one_line, largest_file, truncate
from tests.rl.rl_fixtures import small_model_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A model checkpoint of the small config (random leaves; no model init to compile)."""
    cfg = small_model_config()
    abstract = nnx.state(nnx.eval_shape(lambda: LingForCausalLM(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                         abstract.to_pure_dict())
    path = tmp_path_factory.mktemp("model") / "model"
    with atomic_output_dir(path) as tmp:
        write_model_dir(tmp, state, cfg)
    load_model(path)  # intact before the damage
    return path


def _halve_every_file(state):
    for file in state.rglob("*"):
        if file.is_file():
            truncate(file, file.stat().st_size // 2)


DAMAGE = {
    "data_truncated": lambda s: truncate(largest_file(s), 64),
    "every_file_halved": _halve_every_file,
    "metadata_emptied": lambda s: (s / "_METADATA").write_text(""),
    "metadata_deleted": lambda s: (s / "_METADATA").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_model_checkpoint_is_one_line(saved, tmp_path, damage):
    broken = shutil.copytree(saved, tmp_path / "model")
    DAMAGE[damage](broken / MODEL_STATE_DIR)
    with pytest.raises(ModelCheckpointError) as info:
        load_model(broken)
    assert_message_one_line(str(info.value), str(broken / MODEL_STATE_DIR))
    assert "tensorstore_spec" not in str(info.value)
