"""Read HF checkpoint directories with the `safetensors` package (independent of our reader)."""

import json
import pathlib

import torch
from safetensors import safe_open


def shard_files(hf_dir: pathlib.Path) -> list[pathlib.Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [hf_dir / n for n in names]
    return [hf_dir / "model.safetensors"]


def read_tensors(hf_dir: pathlib.Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) HF directory as torch tensors in their stored dtype."""
    out = {}
    for file in shard_files(hf_dir):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                assert key not in out, f"{key} stored twice"
                out[key] = f.get_tensor(key)
    return out


def stored_dtypes(hf_dir: pathlib.Path) -> dict[str, str]:
    """Header dtype string (F32, BF16, F8_E4M3, ...) of every tensor."""
    out = {}
    for file in shard_files(hf_dir):
        with safe_open(file, framework="pt") as f:
            out.update({k: f.get_slice(k).get_dtype() for k in f.keys()})
    return out


def file_metadata(file: pathlib.Path) -> dict:
    with safe_open(file, framework="pt") as f:
        return f.metadata()
