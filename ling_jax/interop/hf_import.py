"""Load a Hugging Face Ling 2.0 directory (single file or sharded, bf16/fp32/FP8) into our model."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ling_jax.config import ConfigError, from_hf_config, validate_model_config
from ling_jax.config.budget import check_fits_in_memory
from ling_jax.interop import fp8
from ling_jax.interop.keymap import hf_shapes, tensor_maps, to_ours
from ling_jax.interop.safetensors_io import FLOAT_NAMES, SafetensorsError, SafetensorsFile
from ling_jax.model.transformer import LingForCausalLM

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint that does not match its config; the message names the key and the fix."""


def read_config(hf_dir: str | pathlib.Path, **runtime):
    """Parse and validate config.json (errors name the file and field)."""
    path = pathlib.Path(hf_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a HF checkpoint directory needs config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None
    try:
        cfg = from_hf_config(raw, **runtime)
        validate_model_config(cfg)
        check_fits_in_memory(cfg)  # before any key list or array is built
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    return cfg


def read_weight_map(index: pathlib.Path) -> dict[str, str]:
    """The index's weight_map (tensor → shard file name), each name checked to stay in the directory."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({e!r})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map is a {type(weight_map).__name__}, expected "
                              "an object of tensor name -> file name")
    root = index.parent.resolve()
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{index}: tensor {key!r} maps to {name!r}, not a file name")
        rel = pathlib.PurePath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise CheckpointError(f"{index}: tensor {key!r} maps to {name!r}; shard paths must "
                                  "be relative and stay inside the checkpoint directory")
        if not (root / rel).resolve().is_relative_to(root):
            raise CheckpointError(f"{index}: tensor {key!r} maps to {name!r}, which resolves "
                                  f"outside {root} (symlink); shards must stay inside it")
    return weight_map


def open_files(hf_dir: str | pathlib.Path) -> dict[str, SafetensorsFile]:
    """Key → open file, from model.safetensors or the shard index."""
    root = pathlib.Path(hf_dir)
    index = root / INDEX_FILE
    try:
        if index.is_file():
            weight_map = read_weight_map(index)
            files = {name: SafetensorsFile(root / name) for name in sorted(set(weight_map.values()))
                     if _exists(root / name, index)}
            located = {}
            for key, name in weight_map.items():
                if key not in files[name].entries:
                    raise CheckpointError(f"{index}: maps {key!r} to {name}, which lacks it")
                located[key] = files[name]
            return located
        if (root / SINGLE_FILE).is_file():
            single = SafetensorsFile(root / SINGLE_FILE)
            return dict.fromkeys(single.keys(), single)
    except SafetensorsError as e:
        raise CheckpointError(str(e)) from None
    raise CheckpointError(f"{root}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def _exists(path: pathlib.Path, index: pathlib.Path) -> bool:
    if not path.is_file():
        raise CheckpointError(f"{index}: shard {path.name} is listed but missing from {path.parent}")
    return True


def check_keys(files: dict[str, SafetensorsFile], cfg) -> None:
    """Every expected key present with its shape; no unexpected keys (FP8 scales allowed)."""
    shapes = hf_shapes(cfg)
    present = {k for k in files if not k.endswith(_IGNORED_SUFFIXES)}
    scales = {k for k in present if k.endswith(fp8.SCALE_SUFFIX)}
    missing = sorted(set(shapes) - present)
    if missing:
        raise CheckpointError(f"missing key {missing[0]!r} ({len(missing)} missing in all); the "
                              "checkpoint does not match config.json")
    extra = sorted(present - set(shapes) - {k for k in scales
                                            if k[: -len(fp8.SCALE_SUFFIX)] in shapes})
    if extra:
        raise CheckpointError(f"unexpected key {extra[0]!r} ({len(extra)} unexpected in all); "
                              "the checkpoint does not match config.json")
    for key, shape in shapes.items():
        if files[key].shape(key) != shape:
            raise CheckpointError(f"key {key!r} has shape {files[key].shape(key)}, config.json "
                                  f"implies {shape}")
    for key in sorted(present):  # every parameter (and FP8 scale) is floating point
        if files[key].dtype_name(key) not in FLOAT_NAMES:
            raise CheckpointError(f"{files[key].path}: tensor {key!r} has dtype "
                                  f"{files[key].dtype_name(key)}; a float parameter needs one "
                                  f"of {sorted(FLOAT_NAMES)}")


def read_tensor(files: dict[str, SafetensorsFile], key: str) -> np.ndarray:
    """One HF tensor as float32 (FP8 block-quantised tensors are dequantised)."""
    value = files[key].get(key)
    scale_key = key + fp8.SCALE_SUFFIX
    if scale_key in files:
        try:
            return fp8.dequantise(value, files[scale_key].get(scale_key), key)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    return value.astype(np.float32)


def abstract_model(cfg) -> LingForCausalLM:
    return nnx.eval_shape(lambda: LingForCausalLM(cfg, rngs=nnx.Rngs(0)))


def load_params(hf_dir, cfg) -> dict:
    """Our pure-dict state (numpy, in each leaf's dtype), filled tensor by tensor."""
    files = open_files(hf_dir)
    check_keys(files, cfg)
    abstract = nnx.state(abstract_model(cfg)).to_pure_dict()
    leaves = jax.tree.map(lambda s: np.empty(s.shape, s.dtype), abstract)
    cache: dict[str, np.ndarray] = {}
    for t in tensor_maps(cfg):
        if t.hf_key not in cache:  # query_key_value feeds three leaves: read it once
            cache = {t.hf_key: read_tensor(files, t.hf_key)}
        leaf = leaves
        for part in t.path:
            leaf = leaf[part]
        leaf[t.index] = to_ours(t, cache[t.hf_key], cfg).astype(leaf.dtype)
    return leaves


def _to_device_leaf_by_leaf(tree: dict) -> dict:
    """Move numpy leaves to jax arrays one at a time, freeing each host copy as it goes."""
    for key in list(tree):
        value = tree.pop(key)
        tree[key] = _to_device_leaf_by_leaf(value) if isinstance(value, dict) else jnp.asarray(value)
        del value
    return tree


def load_model(hf_dir, **runtime) -> tuple[LingForCausalLM, object]:
    """(model, cfg) from a HF directory; runtime fields (dtype, moe_backend, ...) override."""
    cfg = read_config(hf_dir, **runtime)
    params = load_params(hf_dir, cfg)
    model = abstract_model(cfg)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, _to_device_leaf_by_leaf(params))
    nnx.update(model, state)
    return model, cfg
