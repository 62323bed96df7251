"""MoE layer forward+backward time per expert-compute backend vs a dense SwiGLU of equal active FLOPs.

    python benchmarks/moe_layer.py [--shapes tiny,mini] [--backends blocked,ragged_dot,dense]

The dense peer has width (top_k + shared) x expert width, so it does the same matmul FLOPs per
token as the MoE layer's routed + shared experts; the ratio MoE/dense is the routing overhead.
Prints figures only (never pass/fail).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from ling_jax.cli import host_allocator  # noqa: E402
from ling_jax.config import get_preset  # noqa: E402
from ling_jax.model.mlp import SwiGLU  # noqa: E402
from ling_jax.model.moe import MoE  # noqa: E402

SHAPES = {  # tokens, hidden, experts, top_k, expert width, groups, kept groups
    "tiny": (512, 128, 16, 4, 64, 4, 2),
    "mini": (4096, 512, 64, 8, 256, 8, 4),
}
_SHAPES = flags.DEFINE_list("shapes", ["tiny", "mini"], f"shapes from {sorted(SHAPES)}")
_BACKENDS = flags.DEFINE_list("backends", ["blocked", "ragged_dot", "dense"], "MoE backends")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "compute dtype")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repetitions (best is reported)")
_MAX_DENSE_WORK = flags.DEFINE_float("max_slow_gflop", 400.0,
                                     "skip E×-work backends above this many GFLOP per step")


def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def _fwd_bwd(module):
    graphdef, state = nnx.split(module)

    @jax.jit
    def step(state, x):
        def loss(state, x):
            out = nnx.merge(graphdef, state)(x[None])
            y = out[0] if isinstance(out, tuple) else out
            return jnp.sum(y.astype(jnp.float32) ** 2)
        return jax.grad(loss, argnums=(0, 1))(state, x)
    return step, state


def bench_shape(name: str) -> None:
    tokens, hidden, experts, top_k, width, groups, kept = SHAPES[name]
    cfg = get_preset("tiny")
    cfg.update(dict(hidden_size=hidden, num_experts=experts, num_experts_per_tok=top_k,
                    moe_intermediate_size=width, moe_shared_expert_intermediate_size=width,
                    n_group=groups, topk_group=kept, dtype=_DTYPE.value))
    dtype = jnp.dtype(_DTYPE.value)
    x = jax.random.normal(jax.random.key(0), (tokens, hidden), jnp.float32).astype(dtype)
    active_flops = 3 * 2 * tokens * hidden * width * (top_k + 1) * 3  # fwd+bwd ≈ 3× fwd
    dense = SwiGLU(hidden, width * (top_k + 1), std=0.02, dtype=dtype, param_dtype=jnp.float32,
                   rngs=nnx.Rngs(0))
    step, state = _fwd_bwd(dense)
    t_dense = _time(step, state, x, repeats=_REPEATS.value)
    print(f"\n{name}: {tokens} tokens, hidden {hidden}, {experts} experts top-{top_k} (+1 shared), "
          f"width {width}, {_DTYPE.value}; active {active_flops / 1e9:.1f} GFLOP per fwd+bwd")
    print(f"  {'dense SwiGLU (same active FLOPs)':<34} {t_dense * 1e3:9.1f} ms  "
          f"{active_flops / t_dense / 1e9:7.1f} GFLOP/s  ratio 1.00")
    for backend in _BACKENDS.value:
        work = active_flops * (experts / top_k if backend in ("dense", "ragged_dot") else 1)
        if backend != "blocked" and jax.default_backend() == "cpu" and work / 1e9 > _MAX_DENSE_WORK.value:
            print(f"  {'MoE ' + backend:<34} skipped: ~{work / 1e9:.0f} GFLOP on XLA:CPU "
                  "(all experts on all tokens); raise --max_slow_gflop to run")
            continue
        cfg.moe_backend = backend
        step, state = _fwd_bwd(MoE(cfg, dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(1)))
        t = _time(step, state, x, repeats=_REPEATS.value)
        print(f"  {'MoE ' + backend:<34} {t * 1e3:9.1f} ms  {active_flops / t / 1e9:7.1f} GFLOP/s  "
              f"ratio {t / t_dense:.2f}")


def main(argv) -> None:
    del argv
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    for name in _SHAPES.value:
        bench_shape(name)


if __name__ == "__main__":
    host_allocator.restart_with_tuned_allocator()  # see its docstring: ~12% on bench-mini
    app.run(main)
