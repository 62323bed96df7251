"""Export our model to a Hugging Face Ling 2.0 directory (reference §3, LV2-convert layout).

Walks `keymap.tensor_maps` (the list the importer reads), so every upstream key is written exactly
once under its upstream name and layout. Shards are planned from shapes first and then materialised
one at a time: the host holds the model plus at most one shard of converted tensors.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import pathlib
import shutil
from collections.abc import Callable

import ml_dtypes
import numpy as np
from flax import nnx

from ling_jax.config import to_hf_config, validate_model_config
from ling_jax.interop import fp8, hf_tokenizer
from ling_jax.interop.hf_import import INDEX_FILE, SINGLE_FILE
from ling_jax.interop.keymap import TensorMap, hf_shapes, tensor_maps, to_hf
from ling_jax.interop.model_checkpoint import atomic_output_dir, check_output_dir
from ling_jax.interop.safetensors_io import write_file

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
# The transformers code written beside the weights; config.json's auto_map names these files.
MODEL_CODE_DIR = pathlib.Path(__file__).with_name("torch_bailing")
MODEL_CODE_FILES = ("configuration_bailing_moe_v2.py", "modeling_bailing_moe_v2.py")
FP8_QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                           "weight_block_size": [fp8.BLOCK, fp8.BLOCK]}
_F32, _BF16 = np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16)


def _is_fp32_key(key: str) -> bool:
    # The balancing bias stays fp32 in every export (reference §2.7: rounding it flips routing).
    return key.endswith("mlp.gate.expert_bias")


def _cast(dtype: np.dtype) -> Callable[[str, np.ndarray], list[tuple[str, np.ndarray]]]:
    def convert(key: str, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
        return [(key, np.asarray(value, _F32 if _is_fp32_key(key) else dtype))]
    return convert


def _fp8(key: str, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if not fp8.is_quantised_key(key):
        return _cast(_BF16)(key, value)
    q, scale_inv = fp8.quantise(np.asarray(value, np.float32), key)
    return [(key, q), (key + fp8.SCALE_SUFFIX, scale_inv)]


def _fp8_sizes(key: str, shape: tuple[int, ...]) -> list[tuple[str, int]]:
    if not fp8.is_quantised_key(key):
        return [(key, math.prod(shape) * (4 if _is_fp32_key(key) else 2))]
    blocks = math.ceil(shape[0] / fp8.BLOCK) * math.ceil(shape[1] / fp8.BLOCK)
    return [(key, math.prod(shape)), (key + fp8.SCALE_SUFFIX, 4 * blocks)]


def _cast_sizes(itemsize: int) -> Callable[[str, tuple[int, ...]], list[tuple[str, int]]]:
    def sizes(key: str, shape: tuple[int, ...]) -> list[tuple[str, int]]:
        return [(key, math.prod(shape) * (4 if _is_fp32_key(key) else itemsize))]
    return sizes


@dataclasses.dataclass(frozen=True)
class ExportDtype:
    """One export dtype: key + fp32 value → tensors to write, and their byte sizes (planning)."""

    torch_dtype: str  # config.json torch_dtype
    convert: Callable[[str, np.ndarray], list[tuple[str, np.ndarray]]]
    sizes: Callable[[str, tuple[int, ...]], list[tuple[str, int]]]
    quantization_config: dict | None = None


EXPORT_DTYPES: dict[str, ExportDtype] = {
    "float32": ExportDtype("float32", _cast(_F32), _cast_sizes(4)),
    "bfloat16": ExportDtype("bfloat16", _cast(_BF16), _cast_sizes(2)),
    "fp8": ExportDtype("bfloat16", _fp8, _fp8_sizes, FP8_QUANTIZATION_CONFIG),
}


def check_export_args(out_dir, *, dtype: str = "bfloat16",
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                      tokenizer_dir=None, chat_template: str | None = None,
                      overwrite: bool = False) -> hf_tokenizer.TokenizerSource | None:
    """Validate export arguments before anything is loaded or written; returns the tokenizer."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(EXPORT_DTYPES)}")
    if not isinstance(max_shard_bytes, int) or max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be a positive int, got {max_shard_bytes!r}")
    if chat_template is not None and not isinstance(chat_template, str):
        raise ValueError(f"chat_template must be a Jinja template string, got "
                         f"{type(chat_template).__name__}")
    if chat_template is not None and tokenizer_dir is None:
        raise ValueError("a chat_template needs a tokenizer to export it with (tokenizer_dir)")
    check_output_dir(out_dir, overwrite=overwrite)
    return None if tokenizer_dir is None else hf_tokenizer.check_tokenizer(tokenizer_dir)


def transformers_version() -> str | None:
    """The installed transformers version (config.json records it), or None when absent."""
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def export_config(cfg, dtype: str, tokenizer: hf_tokenizer.TokenizerSource | None) -> dict:
    """config.json: the released key set, this export's dtype, the tokenizer's special ids."""
    spec = EXPORT_DTYPES[dtype]
    config = to_hf_config(cfg, torch_dtype=spec.torch_dtype)
    if spec.quantization_config is not None:
        config["quantization_config"] = dict(spec.quantization_config)
    if tokenizer is not None:
        config.update(tokenizer.token_ids)
    version = transformers_version()
    if version:
        config["transformers_version"] = version
    else:
        config.pop("transformers_version", None)
    return dict(sorted(config.items()))


def _groups(cfg) -> list[list[TensorMap]]:
    """tensor_maps grouped by HF key (query_key_value gathers three leaves), in upstream order."""
    groups: dict[str, list[TensorMap]] = {}
    for t in tensor_maps(cfg):
        groups.setdefault(t.hf_key, []).append(t)
    return list(groups.values())


def plan_shards(cfg, dtype: str, max_shard_bytes: int) -> list[list[list[TensorMap]]]:
    """Key groups per shard, filled in order up to max_shard_bytes (oversize tensors alone)."""
    shapes, sizes = hf_shapes(cfg), EXPORT_DTYPES[dtype].sizes
    shards: list[list[list[TensorMap]]] = [[]]
    used = 0
    for group in _groups(cfg):
        nbytes = sum(n for _, n in sizes(group[0].hf_key, shapes[group[0].hf_key]))
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(group)
        used += nbytes
    return shards


def _leaf_slice(state: dict, t: TensorMap) -> np.ndarray:
    leaf = state
    for part in t.path:
        leaf = leaf[part]
    return np.asarray(leaf[t.index] if t.index else leaf)  # one layer/expert at a time to host


def _shard_tensors(state: dict, shard: list[list[TensorMap]], cfg, dtype: str,
                   shapes: dict) -> dict[str, np.ndarray]:
    tensors = {}
    for group in shard:
        key = group[0].hf_key
        value = to_hf(group, [_leaf_slice(state, t) for t in group], cfg)
        if tuple(value.shape) != shapes[key]:
            raise ValueError(f"model leaf for {key!r} gives shape {value.shape}, the config "
                             f"implies {shapes[key]}; the model does not match its config")
        tensors.update(EXPORT_DTYPES[dtype].convert(key, value))
    return tensors


def _shard_name(i: int, n: int) -> str:
    return SINGLE_FILE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _write_weights(out: pathlib.Path, state: dict, cfg, dtype: str, max_shard_bytes: int) -> None:
    shards, shapes = plan_shards(cfg, dtype, max_shard_bytes), hf_shapes(cfg)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = _shard_name(i, len(shards))
        tensors = _shard_tensors(state, shard, cfg, dtype, shapes)
        total += write_file(out / name, tensors, {"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors  # one shard of converted tensors at a time
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def export_hf(model, cfg, out_dir: str | os.PathLike, *, dtype: str = "bfloat16",
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, tokenizer_dir=None,
              chat_template: str | None = None, overwrite: bool = False) -> pathlib.Path:
    """Write `model` (an nnx model or its pure-dict state) as a HF Ling 2.0 checkpoint directory.

    dtype: "bfloat16" | "float32" | "fp8" (E4M3 [128,128] blocks + `_scale_inv`, the rest bf16);
    expert_bias is always fp32. The directory also holds the transformers code (`auto_map`) and,
    with `tokenizer_dir` (a tokenizer.json or its directory), the tokenizer files, `chat_template`
    and generation_config.json. Refuses a non-empty `out_dir` unless `overwrite`; atomic.
    """
    validate_model_config(cfg)
    tokenizer = check_export_args(out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes,
                                  tokenizer_dir=tokenizer_dir, chat_template=chat_template,
                                  overwrite=overwrite)
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.tokenizer_json} has {tokenizer.vocab_size} tokens, "
                         f"more than the model's vocab_size {cfg.vocab_size}; pass the model's own "
                         "tokenizer")
    state = model if isinstance(model, dict) else nnx.state(model).to_pure_dict()
    config = export_config(cfg, dtype, tokenizer)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        _write_weights(tmp, state, cfg, dtype, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in MODEL_CODE_FILES:
            shutil.copyfile(MODEL_CODE_DIR / name, tmp / name)
        if tokenizer is not None:
            hf_tokenizer.write_tokenizer(tmp, tokenizer, chat_template=chat_template,
                                         model_max_length=cfg.max_position_embeddings,
                                         transformers_version=config.get("transformers_version"))
    return pathlib.Path(out_dir).absolute()
