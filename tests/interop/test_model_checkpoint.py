"""Model checkpoints (model_config.json + orbax state): exact round trip, overrides, no clobber."""

import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from ling_jax.interop import model_checkpoint
from ling_jax.interop.model_checkpoint import ModelCheckpointError, load_model, save_model


def leaves(model) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model).to_pure_dict())[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


@pytest.fixture(scope="module")
def saved(imported, tmp_path_factory):
    model, cfg = imported
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_model(path, model, cfg)
    return path


def test_round_trip_is_bit_exact(saved, imported):
    model, cfg = imported
    assert sorted(p.name for p in saved.iterdir()) == ["model_config.json", "model_state"]
    assert json.loads((saved / "model_config.json").read_text()) == cfg.to_dict()
    loaded, loaded_cfg = load_model(saved)
    assert loaded_cfg == cfg
    want, got = leaves(model), leaves(loaded)
    assert sorted(want) == sorted(got) and len(want) == 50
    for name, x in want.items():
        assert got[name].dtype == x.dtype, name
        np.testing.assert_array_equal(got[name].view(np.uint8), x.view(np.uint8), err_msg=name)


def test_runtime_overrides_cast_on_restore(saved, imported):
    model, _ = imported
    loaded, cfg = load_model(saved, dtype="bfloat16", param_dtype="bfloat16", moe_backend="dense")
    assert (cfg.param_dtype, cfg.dtype, cfg.moe_backend) == ("bfloat16", "bfloat16", "dense")
    want, got = leaves(model), leaves(loaded)
    for name, x in want.items():
        # Router weight and expert_bias stay fp32 (reference §2.7); the rest round to bf16.
        keep_fp32 = name.endswith(("['router']", "['expert_bias']"))
        expected = x if keep_fp32 else x.astype(ml_dtypes.bfloat16)
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
    with pytest.raises(ModelCheckpointError, match="architecture field.*num_experts"):
        load_model(saved, num_experts=8)


def test_save_refuses_to_clobber_and_failed_save_keeps_old(saved, imported, tmp_path,
                                                           monkeypatch):
    model, cfg = imported
    target = tmp_path / "ckpt"
    shutil.copytree(saved, target)
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    with pytest.raises(FileExistsError, match="not empty"):
        save_model(target, model, cfg)

    def broken_write(directory, state, cfg):
        (directory / "model_config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(model_checkpoint, "write_model_dir", broken_write)
    for path in (target, tmp_path / "fresh"):
        with pytest.raises(OSError, match="disk full"):
            save_model(path, model, cfg, overwrite=True)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half checkpoints left
    monkeypatch.undo()
    (target / "model_config.json").write_text("stale")
    save_model(target, model, cfg, overwrite=True)
    assert json.loads((target / "model_config.json").read_text()) == cfg.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    load_model(target)


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "model_config.json").read_text())
    config.update(changes)
    (dst / "model_config.json").write_text(json.dumps(config))
    return dst


def test_bad_checkpoints_name_the_problem(saved, tmp_path):
    cases = [
        (_edit_config(saved, tmp_path / "experts", num_experts=8, n_group=4),
         r"leaf 'moe_layers/mlp/down_proj' has shape \(2, 16, 32, 64\).* \(2, 8, 32, 64\)"),
        (_edit_config(saved, tmp_path / "no_mtp", num_nextn_predict_layers=0),
         "unexpected leaf 'mtp_layers/0/"),
        (_edit_config(saved, tmp_path / "heads", num_attention_heads=3),
         "num_attention_heads: 3 must be divisible by num_key_value_heads=2"),
        (_edit_config(saved, tmp_path / "unknown", hidden_sizes=64), "unknown model config field"),
        (tmp_path / "missing", "model checkpoint directory not found"),
    ]
    broken = shutil.copytree(saved, tmp_path / "json")
    (broken / "model_config.json").write_text("{not json")
    cases.append((broken, "model_config.json: invalid JSON"))
    no_state = shutil.copytree(saved, tmp_path / "no_state")
    shutil.rmtree(no_state / "model_state")
    cases.append((no_state, "model_state: not found"))
    for path, match in cases:
        with pytest.raises(ModelCheckpointError, match=match):
            load_model(path)
