"""Train-step throughput: tokens/s and MFU for the tiny and bench-mini configs (prints figures).

    python benchmarks/train_step.py [--models tiny,bench_mini] [--dtype bfloat16] [--steps 5]

Uses the real train step (forward, MTP, losses, backward, AdamW, expert-bias update) on random
packed batches. bench-mini is shared/docs/benchmarks.md's shape: 4 x 512 tokens. MFU counts model
FLOPs as MaxText does (6·N_active·tokens + causal attention) against the measured bf16 peak.
"""

from __future__ import annotations

import functools
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from ling_jax.cli import host_allocator  # noqa: E402
from ling_jax.config import get_preset  # noqa: E402
from ling_jax.model.moe import ExpertBias  # noqa: E402
from ling_jax.model.transformer import LingForCausalLM  # noqa: E402
from ling_jax.train import flops  # noqa: E402
from ling_jax.train.optimizer import make_optimizer  # noqa: E402
from ling_jax.train.schedules import make_schedule  # noqa: E402
from ling_jax.train.step import StepConfig, train_step  # noqa: E402

SHAPES = {"tiny": (8, 256), "bench_mini": (4, 512)}  # batch, sequence
_MODELS = flags.DEFINE_list("models", ["tiny", "bench_mini"], "presets to time")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "compute dtype")
_BACKEND = flags.DEFINE_string("moe_backend", "blocked", "expert-compute backend")
_ATTENTION = flags.DEFINE_string("attention_backend", "reference", "attention backend")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps (after one compile step)")
_REMAT = flags.DEFINE_string("remat_policy", "none", "remat policy")
_SCAN = flags.DEFINE_bool("scan_layers", True, "scan the layer stacks (False unrolls them)")


def _batch(rng, batch, length, vocab):
    ids = rng.integers(3, vocab, size=(batch, length + 1), dtype=np.int32)
    seg = np.ones((batch, length), np.int32)
    seg[:, length // 2:] = 2  # two packed documents per row
    pos = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)])[None].repeat(batch, 0)
    mask = np.ones((batch, length), np.float32)
    mask[:, length // 2 - 1] = 0
    mask[:, -1] = 0
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask, "segment_ids": seg,
            "positions": pos.astype(np.int32)}


def bench(name: str, peak: float) -> None:
    cfg = get_preset(name)
    cfg.update(dict(dtype=_DTYPE.value, moe_backend=_BACKEND.value, remat_policy=_REMAT.value,
                    scan_layers=_SCAN.value, attention_backend=_ATTENTION.value))
    batch, length = SHAPES[name]
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params, biases = nnx.split(model, nnx.Param, ExpertBias)
    optimizer = make_optimizer(ml_collections.ConfigDict(dict(weight_decay=0.1)),
                               make_schedule(dict(kind="constant", peak_lr=1e-3)))
    params = params.to_pure_dict()
    state = {"params": params, "biases": biases.to_pure_dict(), "opt_state": optimizer.init(params),
             "step": jnp.zeros((), jnp.int32)}
    sc = StepConfig(microbatches=1, mtp_weight=0.1, z_coef=0.0, bias_update_rate=1e-3,
                    num_mtp=cfg.num_nextn_predict_layers,
                    num_moe=cfg.num_hidden_layers - cfg.first_k_dense_replace)
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, sc=sc),
                   donate_argnums=(0,))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    state, metrics = step(state, _batch(rng, batch, length, cfg.vocab_size))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(_STEPS.value):
        b = _batch(rng, batch, length, cfg.vocab_size)
        t0 = time.perf_counter()
        state, metrics = step(state, b)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    tokens = batch * length
    step_flops = flops.training_flops_per_step(cfg, length, tokens)
    print(f"{name:<11} {_DTYPE.value:<8} {batch}x{length:<5} compile {compile_s:5.1f} s  step "
          f"{sec * 1e3:7.0f} ms  {tokens / sec:8.0f} tok/s  {step_flops / sec / 1e9:6.1f} GFLOP/s  "
          f"MFU {flops.mfu(step_flops, sec, peak, 1):5.1%}  loss {float(metrics['loss']):.3f}")


def main(argv) -> None:
    del argv
    peak = flops.peak_flops_per_device() or flops.measure_cpu_peak_flops()
    print(f"device {jax.devices()[0].device_kind}; peak {peak / 1e9:.0f} GFLOP/s "
          f"(bf16 in, f32 accumulate); backend {_BACKEND.value}; attention {_ATTENTION.value}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")
    for name in _MODELS.value:
        bench(name, peak)


if __name__ == "__main__":
    host_allocator.restart_with_tuned_allocator()  # see its docstring: ~12% on bench-mini
    app.run(main)
