"""FP8 (E4M3) [128,128]-block weight (de)quantisation of HF checkpoints (reference §3, LV2-convert)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

E4M3_MAX = 448.0
BLOCK = 128
SCALE_SUFFIX = "_scale_inv"
# Tensors the upstream converter quantises; embeddings, head, router, norms and eh_proj stay bf16.
_QUANTISED_PARTS = ("query_key_value.weight", "attention.dense.weight", "gate_proj.weight",
                    "up_proj.weight", "down_proj.weight")
_POW2_PARTS = ("attention.dense.weight", ".experts.")  # dense and expert gate/up: UE8M0 scales


def is_quantised_key(key: str) -> bool:
    return key.endswith(_QUANTISED_PARTS) and ".mlp.gate.weight" not in key


def _uses_pow2(key: str) -> bool:
    if key.endswith("attention.dense.weight"):
        return True
    return ".experts." in key and key.endswith(("gate_proj.weight", "up_proj.weight"))


def _expand(scale: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(scale, BLOCK, 0), BLOCK, 1)[: shape[0], : shape[1]]


def quantise(weight: np.ndarray, key: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(fp8 weight, fp32 scale_inv [ceil(out/128), ceil(in/128)]); scale = amax(block)/448."""
    w = np.asarray(weight, np.float32)
    rows, cols = w.shape
    br, bc = math.ceil(rows / BLOCK), math.ceil(cols / BLOCK)
    padded = np.zeros((br * BLOCK, bc * BLOCK), np.float32)
    padded[:rows, :cols] = np.abs(w)
    amax = padded.reshape(br, BLOCK, bc, BLOCK).max(axis=(1, 3))
    scale = np.maximum(amax, 1e-4) / E4M3_MAX
    if _uses_pow2(key):
        scale = np.exp2(np.ceil(np.log2(scale)))
    scale = scale.astype(np.float32)
    # Clip before the cast: XLA/ml_dtypes turn overflow into NaN rather than saturating.
    q = np.clip(w / _expand(scale, w.shape), -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
    return q, scale


def dequantise(q: np.ndarray, scale_inv: np.ndarray, key: str = "") -> np.ndarray:
    """fp32 weight from an FP8 tensor and its block scales; shapes are checked."""
    rows, cols = q.shape
    want = (math.ceil(rows / BLOCK), math.ceil(cols / BLOCK))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"{key}{SCALE_SUFFIX}: shape {tuple(scale_inv.shape)} does not match "
                         f"{want} blocks of 128x128 for a weight of shape {q.shape}")
    return q.astype(np.float32) * _expand(scale_inv.astype(np.float32), q.shape)
