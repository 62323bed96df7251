"""Train-step throughput beside the upstream PyTorch code: tokens/s, ratio and MFU (prints figures).

    python benchmarks/train_step.py [--models tiny,bench_mini] [--dtype bfloat16] [--steps 5]

Ours: the real train step (forward, MTP, losses, backward, AdamW, expert-bias update) on random
packed batches, fp32 parameters with --dtype compute. Upstream (`--upstream`, when torch is
installed): `BailingMoeV2ForCausalLM` in train mode (its per-expert masked loop), loss with its MTP
term from `labels`, backward and torch AdamW, parameters in --dtype (pure bf16: torch's fastest CPU
path, so the ratio does not flatter us). Steps alternate ours / upstream; medians are compared.
bench-mini is shared/docs/benchmarks.md's shape: 4 x 512 tokens. MFU counts model FLOPs as MaxText
does (6·N_active·tokens + causal attention) against the median measured bf16 peak (spread printed).
"""

from __future__ import annotations

import functools
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import common  # noqa: E402
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
_UPSTREAM = flags.DEFINE_bool("upstream", True, "also time the upstream PyTorch train step")
_SHAPE = flags.DEFINE_list("shape", None, "batch,length overriding the preset's shape")


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


def ours(name: str, batch: int, length: int):
    """(config, blocking step callable, last-metrics getter) for our jitted train step."""
    cfg = get_preset(name)
    cfg.update(dict(dtype=_DTYPE.value, moe_backend=_BACKEND.value, remat_policy=_REMAT.value,
                    scan_layers=_SCAN.value, attention_backend=_ATTENTION.value))
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params, biases = nnx.split(model, nnx.Param, ExpertBias)
    optimizer = make_optimizer(ml_collections.ConfigDict(dict(weight_decay=0.1)),
                               make_schedule(dict(kind="constant", peak_lr=1e-3)))
    params = params.to_pure_dict()
    holder = {"state": {"params": params, "biases": biases.to_pure_dict(),
                        "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)},
              "metrics": None}
    sc = StepConfig(microbatches=1, mtp_weight=0.1, z_coef=0.0, bias_update_rate=1e-3,
                    num_mtp=cfg.num_nextn_predict_layers,
                    num_moe=cfg.num_hidden_layers - cfg.first_k_dense_replace)
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, sc=sc),
                   donate_argnums=(0,))
    rng = np.random.default_rng(0)

    def run():
        holder["state"], holder["metrics"] = step(holder["state"],
                                                  _batch(rng, batch, length, cfg.vocab_size))
        jax.block_until_ready(holder["metrics"])

    return cfg, run, lambda: holder["metrics"]


def upstream(cfg, batch: int, length: int):
    """A callable running one upstream train step (forward + MTP loss, backward, AdamW)."""
    modeling, reason = common.load_upstream()
    if modeling is None:
        return None, reason
    import torch

    model = common.upstream_model(modeling, cfg, _DTYPE.value).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(0)

    def run():
        ids = torch.from_numpy(rng.integers(3, cfg.vocab_size, (batch, length)).astype(np.int64))
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return run, None


def bench(name: str, peak: common.Peak) -> None:
    batch, length = (int(v) for v in _SHAPE.value) if _SHAPE.value else SHAPES[name]
    cfg, run, metrics = ours(name, batch, length)
    fns, names = [run], ["ling-jax"]
    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    reason = common.add_upstream(_UPSTREAM.value, lambda: upstream(cfg, batch, length), fns, names)
    cold: list[common.Timing] = []
    times = common.alternate(fns, _STEPS.value, cold)
    tokens = batch * length
    step_flops = flops.training_flops_per_step(cfg, length, tokens)
    print(f"{name:<11} {_DTYPE.value:<8} {batch}x{length:<5} compile {compile_s:5.1f} s  loss "
          f"{float(metrics()['loss']):.3f}")
    for who, t, c in zip(names, times, cold, strict=True):
        print(f"  {who:<9} step {t.median * 1e3:7.0f} ms ({t.spread()})  {tokens / t.median:8.0f} "
              f"tok/s  {step_flops / t.median / 1e9:6.1f} GFLOP/s  "
              f"MFU {flops.mfu(step_flops, t.median, peak.median, 1):5.1%}"
              + f"  (cold first call {c.median * 1e3:.0f} ms)")
    theirs_tps = tokens / times[1].median if len(times) > 1 else None
    if theirs_tps is None:
        print(f"  {reason}")
    mfu = flops.mfu(step_flops, times[0].median, peak.median, 1)
    print(common.ratio_line(f"train step {name}", tokens / times[0].median, theirs_tps, "tok/s",
                            2.0) + f"; MFU {mfu:.1%} (goal >= 50%: "
          f"{'reached' if mfu >= 0.5 else 'NOT reached'}); {common.machine_load()}")


def main(argv) -> None:
    del argv
    peak = common.measure_peak()
    print(f"device {jax.devices()[0].device_kind}; {peak.describe()}; backend {_BACKEND.value}; "
          f"attention {_ATTENTION.value}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}; {common.machine_load()}")
    for name in _MODELS.value:
        bench(name, peak)


if __name__ == "__main__":
    host_allocator.restart_with_tuned_allocator()  # see its docstring: ~12% on bench-mini
    app.run(main)
