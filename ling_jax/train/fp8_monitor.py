"""FP8 numerics monitor (TR §5.1.1, reference §5): underflow and distortion per quantised op.

For every FP8 projection (QKV, attention output, dense MLP, shared expert; routed-expert weights
too) and every operand its GEMMs quantise, two figures against the high-precision tensor:
  underflow  fraction of the tensor's non-zero elements whose E4M3 code is 0;
  cosine     cosine similarity between the tensor and its quantise → dequantise reconstruction.
Operands: `x` (input, [1,128] tiles along K: forward GEMM), `w` ([128,128] blocks), `dy` (output
gradient, [1,128] tiles along N: the dX GEMM), `x_t` and `dy_t` ([128,1] tiles along M: the dW
GEMM, where the paper saw the largest errors). Routed experts report `w` only; their input is the
shared expert's `x` (the same tensor, same tiling).

`make_fp8_monitor(model_cfg)` returns `monitor(params, biases, batch) -> {name: float}`; it runs
one unrolled forward + backward of the LM (+MTP) loss with the FP8 linears tapped (zero "probe"
tensors added to each output give dY as their gradients). Run it every N steps on a small batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ling_jax.config.model import FP8_EXPERT_BACKENDS, num_moe_layers
from ling_jax.model.moe import ExpertBias
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.ops import fp8_linear
from ling_jax.train.losses import mtp_targets, next_token_loss
from pallas_kernels.quantize import (
    dequantize_blocks,
    dequantize_cols,
    dequantize_rows,
    quantize_blocks,
    quantize_cols,
    quantize_rows,
)

BLOCK = fp8_linear.BLOCK


def _rows(x):
    q, s = quantize_rows(x, BLOCK)
    return q, dequantize_rows(q, s, BLOCK)


def _cols(x):
    q, s = quantize_cols(x, BLOCK)
    return q, dequantize_cols(q, s, BLOCK)


def _blocks(x):
    q, s = quantize_blocks(x, (BLOCK, BLOCK))
    return q, dequantize_blocks(q, s, (BLOCK, BLOCK))


# tiling name -> x -> (E4M3 codes, f32 reconstruction), as the FP8 GEMMs quantise their operands
TILINGS: dict[str, Callable[[jax.Array], tuple[jax.Array, jax.Array]]] = {
    "rows": _rows, "cols": _cols, "blocks": _blocks,
}
ATTN_OPS = ("attn_q", "attn_k", "attn_v", "attn_o")
MLP_OPS = ("mlp_gate", "mlp_up", "mlp_down")
SHARED_OPS = ("shared_gate", "shared_up", "shared_down")


def quantization_stats(x: jax.Array, tiling: str) -> dict[str, jax.Array]:
    """{'underflow', 'cosine'} of x quantised with `tiling` ('rows', 'cols' or 'blocks')."""
    if tiling not in TILINGS:
        raise ValueError(f"unknown tiling {tiling!r}; choose one of {sorted(TILINGS)}")
    x32 = x.astype(jnp.float32)
    q, recon = TILINGS[tiling](x32)
    nonzero = x32 != 0
    flushed = jnp.sum(nonzero & (q.astype(jnp.float32) == 0))
    underflow = flushed / jnp.maximum(jnp.sum(nonzero), 1)
    norms = jnp.linalg.norm(x32) * jnp.linalg.norm(recon)
    # An all-zero tensor is reproduced exactly: cosine 1 by convention.
    cosine = jnp.where(norms > 0, jnp.sum(x32 * recon) / jnp.where(norms > 0, norms, 1.0), 1.0)
    return {"underflow": underflow, "cosine": cosine}


def linear_op_names(cfg) -> list[str]:
    """Names of the tapped FP8 projections in the order an unrolled forward calls them."""
    shared = SHARED_OPS if cfg.num_shared_experts > 0 else ()
    names = []
    for i in range(cfg.num_hidden_layers):
        ops = ATTN_OPS + (MLP_OPS if i < cfg.first_k_dense_replace else shared)
        names += [f"layer{i}/{op}" for op in ops]
    for m in range(cfg.num_nextn_predict_layers):  # eh_proj stays high precision (§5)
        names += [f"mtp{m}/{op}" for op in ATTN_OPS + shared]
    return names


def expert_weights(cfg, params: dict) -> dict[str, jax.Array]:
    """Routed-expert weights [E, D, F] / [E, F, D] by layer name (quantised per expert block)."""
    out = {}
    if num_moe_layers(cfg):
        mlp = params["moe_layers"]["mlp"]
        for j in range(num_moe_layers(cfg)):
            for proj in ("gate", "up", "down"):
                out[f"layer{cfg.first_k_dense_replace + j}/experts_{proj}"] = mlp[f"{proj}_proj"][j]
    for m, layer in params.get("mtp_layers", {}).items():
        for proj in ("gate", "up", "down"):
            out[f"mtp{m}/experts_{proj}"] = layer["block"]["mlp"][f"{proj}_proj"]
    return out


def monitor_config(model_cfg):
    """The monitored model: FP8 linears on, layers unrolled, no remat (taps need plain tracing)."""
    cfg = model_cfg.copy_and_resolve_references()
    cfg.fp8, cfg.scan_layers, cfg.remat_policy = True, False, "none"
    if cfg.moe_backend not in FP8_EXPERT_BACKENDS:
        cfg.moe_backend = "blocked"  # any FP8 expert path will do: experts are not tapped
    return cfg


def monitored_loss(model, batch: dict, mtp_weight: float) -> jax.Array:
    """Token-mean LM loss + mtp_weight x mean MTP loss (the gradients the monitor looks at)."""
    out = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    lm_sum, count = next_token_loss(out.logits, batch["targets"], batch["loss_mask"])
    loss = lm_sum / jnp.maximum(count, 1)
    depth = out.mtp_logits.shape[0]
    for d in range(depth):
        targets, mask = mtp_targets(batch["targets"], batch["loss_mask"], batch["segment_ids"], d + 1)
        s, n = next_token_loss(out.mtp_logits[d], targets, mask)
        loss = loss + mtp_weight / depth * s / jnp.maximum(n, 1)
    return loss


def _op_stats(name: str, x, w, dy) -> dict[str, jax.Array]:
    operands = {"x": (x, "rows"), "w": (w, "blocks"), "dy": (dy, "rows"), "x_t": (x, "cols"),
                "dy_t": (dy, "cols")}  # fmt: skip
    out = {}
    for operand, (tensor, tiling) in operands.items():
        for metric, value in quantization_stats(tensor, tiling).items():
            out[f"fp8/{name}/{operand}/{metric}"] = value
    return out


def _summarise(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Worst case per operand over all ops: min cosine and max underflow."""
    out = {}
    for operand in ("x", "w", "dy", "x_t", "dy_t"):
        cos = [v for k, v in stats.items() if k.endswith(f"/{operand}/cosine")]
        under = [v for k, v in stats.items() if k.endswith(f"/{operand}/underflow")]
        if cos:
            out[f"fp8/min_cosine/{operand}"] = jnp.min(jnp.stack(cos))
            out[f"fp8/max_underflow/{operand}"] = jnp.max(jnp.stack(under))
    return out


def make_capture(model_cfg, *, mtp_weight: float | None = None):
    """(op names, capture) where capture(params, biases, batch) -> (loss, [(x_MK, w_KN)], [dy_MN])
    for every tapped FP8 projection, in `names` order (traceable; jit it)."""
    cfg = monitor_config(model_cfg)
    weight = float(cfg.mtp_loss_scaling_factor if mtp_weight is None else mtp_weight)
    abstract = nnx.eval_shape(lambda: LingForCausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef = nnx.split(abstract, nnx.Param, ExpertBias)[0]
    names = linear_op_names(cfg)

    def tapped_loss(probes, params, biases, batch):
        seen: list[tuple[jax.Array, jax.Array]] = []

        def hook(x_MK, w_KN, y_MN):
            seen.append((x_MK, w_KN))
            return y_MN + probes[len(seen) - 1] if probes is not None else y_MN

        with fp8_linear.tap(hook):
            loss = monitored_loss(nnx.merge(graphdef, params, biases), batch, weight)
        return loss, seen

    def capture(params, biases, batch):
        def outputs(*args):  # the projections' output shapes, from a trace without probes
            return [jnp.zeros((x.shape[0], w.shape[1]), jnp.float32) for x, w in tapped_loss(None, *args)[1]]

        shapes = jax.eval_shape(outputs, params, biases, batch)
        if len(shapes) != len(names):
            raise ValueError(f"fp8 monitor expected {len(names)} FP8 projections, traced {len(shapes)}")
        probes = [jnp.zeros(s.shape, jnp.float32) for s in shapes]
        (loss, seen), dys = jax.value_and_grad(tapped_loss, has_aux=True)(probes, params, biases, batch)
        return loss, seen, dys

    return names, capture


def make_fp8_monitor(model_cfg, *, mtp_weight: float | None = None) -> Callable[..., dict[str, float]]:
    """monitor(params, biases, batch) -> {'fp8/<op>/<operand>/<underflow|cosine>': float, ...}
    plus 'fp8/min_cosine/<operand>' and 'fp8/max_underflow/<operand>' over all ops.

    params/biases: the train state's pure dicts; batch: an LM batch (inputs, positions,
    segment_ids, targets, loss_mask). mtp_weight defaults to mtp_loss_scaling_factor.
    """
    cfg = monitor_config(model_cfg)
    names, capture = make_capture(cfg, mtp_weight=mtp_weight)

    @jax.jit
    def stats(params, biases, batch):
        _, seen, dys = capture(params, biases, batch)
        out = {}
        for name, (x, w), dy in zip(names, seen, dys, strict=True):
            out.update(_op_stats(name, x, w, dy))
        for name, w in expert_weights(cfg, params).items():
            for metric, value in quantization_stats(w, "blocks").items():
                out[f"fp8/{name}/w/{metric}"] = value
        return {**out, **_summarise(out)}

    def monitor(params, biases, batch) -> dict[str, float]:
        return {k: float(v) for k, v in jax.device_get(stats(params, biases, batch)).items()}

    return monitor


def monitor_due(global_step: int, every: int) -> bool:
    """True on the steps the monitor should run (every > 0 and a multiple of it)."""
    return every > 0 and global_step % every == 0
