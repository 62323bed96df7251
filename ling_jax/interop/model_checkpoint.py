"""The on-disk model checkpoint: `model_config.json` + an orbax checkpoint of the pure-dict state.

Layout of a model checkpoint directory (import-hf writes one; train step dirs hold the same two
entries, written with `write_model_dir`):

    model_config.json   the full model ConfigDict (HF-named architecture fields + runtime fields)
    model_state/        orbax StandardCheckpointer tree of nnx.state(model).to_pure_dict()
                        (params and the fp32 expert_bias)

Saves go to a temporary sibling that is renamed into place, so a failed save never leaves half a
checkpoint nor destroys the previous one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from ling_jax.config import ConfigError, validate_model_config
from ling_jax.config.budget import check_fits_in_memory
from ling_jax.config.model import ARCHITECTURE_DEFAULTS, RUNTIME_DEFAULTS, model_config
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.orbax_errors import error_cause

MODEL_CONFIG_FILE = "model_config.json"
MODEL_STATE_DIR = "model_state"


class ModelCheckpointError(ValueError):
    """A model checkpoint that is missing, malformed or does not match its config."""


# ---------------------------------------------------------------------------------------------
# Atomic output directories (shared with hf_export).


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """Absolute `path` if it may be written: absent, an empty directory, or `overwrite`."""
    path = pathlib.Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a directory; choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path}: exists and is not empty; choose another output path or "
                              "pass overwrite (--overwrite)")
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, *,
                      overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path`, on error it goes."""
    path = check_output_dir(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the result should be readable like a mkdir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, path)


def _swap_in(tmp: pathlib.Path, path: pathlib.Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    # Move the old directory aside first, so it survives until the new one is in place.
    old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.rename(path, old / path.name)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old / path.name, path)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Config.


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=1, sort_keys=True) + "\n"


def read_model_config(path: str | os.PathLike, **runtime) -> ml_collections.ConfigDict:
    """The validated config of a model checkpoint; `runtime` may override runtime fields only."""
    file = pathlib.Path(path) / MODEL_CONFIG_FILE
    if not file.is_file():
        raise ModelCheckpointError(f"{file}: not found; a model checkpoint directory holds "
                                   f"{MODEL_CONFIG_FILE} and {MODEL_STATE_DIR}/ (ling-jax "
                                   "import-hf writes one)")
    arch = sorted(set(runtime) & set(ARCHITECTURE_DEFAULTS))
    if arch:
        raise ModelCheckpointError(f"cannot override architecture field(s) {arch} of a saved "
                                   f"model; only runtime fields {sorted(RUNTIME_DEFAULTS)} "
                                   "may change")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ModelCheckpointError(f"{file}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ModelCheckpointError(f"{file}: must hold a JSON object")
    missing = sorted(set(ARCHITECTURE_DEFAULTS) - set(raw))
    if missing:
        raise ModelCheckpointError(f"{file}: missing field {missing[0]!r} ({len(missing)} missing)")
    try:
        cfg = model_config(**{**raw, **runtime})
        validate_model_config(cfg)
        check_fits_in_memory(cfg)  # before any array is built
    except (ConfigError, TypeError, ValueError) as e:
        raise ModelCheckpointError(f"{file}: {e}") from None
    return cfg


# ---------------------------------------------------------------------------------------------
# Save / load.


def model_state(model: LingForCausalLM) -> dict:
    """The pure-dict state that a model checkpoint stores (params + expert_bias)."""
    return nnx.state(model).to_pure_dict()


def write_model_dir(directory: str | os.PathLike, state: dict, cfg) -> None:
    """Write config + state into an existing empty `directory` (callers make it atomic)."""
    directory = pathlib.Path(directory).absolute()
    (directory / MODEL_CONFIG_FILE).write_text(config_to_json(cfg))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / MODEL_STATE_DIR, state)
        checkpointer.wait_until_finished()


def save_model(path: str | os.PathLike, model: LingForCausalLM, cfg, *,
               overwrite: bool = False) -> pathlib.Path:
    """Save `model` (with `cfg`) as a model checkpoint directory at `path`; returns the path."""
    validate_model_config(cfg)
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        write_model_dir(tmp, model_state(model), cfg)
    return pathlib.Path(path).absolute()


def _flat(tree: dict, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """{'a/b/0/w': shape} with string keys (orbax stores int dict keys as strings)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "/"))
        else:
            out[name] = tuple(value.shape)
    return out


def _check_state(state_dir: pathlib.Path, expected: dict) -> None:
    """Same leaf paths and shapes as the model the config builds; errors name the leaf."""
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            item = checkpointer.metadata(state_dir).item_metadata
            stored = None if item is None else item.tree
        except Exception as e:  # orbax / tensorstore / JSON errors alike
            raise ModelCheckpointError(f"{state_dir}: not a readable orbax checkpoint "
                                       f"({error_cause(e)})") from None
    if stored is None:
        raise ModelCheckpointError(f"{state_dir}: not a readable orbax checkpoint (its metadata "
                                   "is missing or truncated); re-create it (ling-jax import-hf)")
    have, want = _flat(dict(stored)), _flat(expected)
    for name in sorted(set(want) - set(have)):
        raise ModelCheckpointError(f"{state_dir}: missing leaf {name!r}; the state does not match "
                                   f"{MODEL_CONFIG_FILE}")
    for name in sorted(set(have) - set(want)):
        raise ModelCheckpointError(f"{state_dir}: unexpected leaf {name!r}; the state does not "
                                   f"match {MODEL_CONFIG_FILE}")
    for name, shape in want.items():
        if have[name] != shape:
            raise ModelCheckpointError(f"{state_dir}: leaf {name!r} has shape {have[name]}, "
                                       f"{MODEL_CONFIG_FILE} implies {shape}")


def load_model(path: str | os.PathLike, *, sharding: jax.sharding.Sharding | None = None,
               **runtime) -> tuple[LingForCausalLM, ml_collections.ConfigDict]:
    """(model, cfg) from a model checkpoint; runtime fields (dtype, param_dtype, moe_backend, ...)
    override the saved ones. Leaves are restored straight into arrays of the target dtype."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise ModelCheckpointError(f"{path}: model checkpoint directory not found")
    cfg = read_model_config(path, **runtime)
    state_dir = path / MODEL_STATE_DIR
    if not state_dir.is_dir():
        raise ModelCheckpointError(f"{state_dir}: not found; the checkpoint has no model state")
    model = nnx.eval_shape(lambda: LingForCausalLM(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(model)
    abstract = state.to_pure_dict()
    _check_state(state_dir, abstract)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(state_dir, target)
        except Exception as e:  # tensorstore raises bare Exception for unreadable chunks
            raise ModelCheckpointError(f"{state_dir}: cannot be read, the checkpoint is damaged "
                                       f"({error_cause(e)})") from None
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model, cfg
