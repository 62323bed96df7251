"""Sharded train-step figures (informational, never pass/fail).

    python benchmarks/parallel_step.py            # step time per mesh on 8 fake CPU devices
    python benchmarks/parallel_step.py --aot      # + AOT per-device memory of the 4K phase of
                                                  #   experiments/ling_*_pretrain.py (libtpu; ~1 h)
CPU step times only show that every mesh runs and what the collectives cost on one host; the
fake devices share the same cores, so no mesh is faster than one device here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ling_jax.config import get_preset  # noqa: E402
from ling_jax.launch.aot import compile_train_step, lm_step_fn, topology_devices  # noqa: E402
from ling_jax.parallel.sharding import plan_for_experiment  # noqa: E402
from ling_jax.train.experiment import checkpointing, experiment  # noqa: E402
from ling_jax.train.loop import init_state  # noqa: E402

CPU_MESHES = {
    "1 device": None,
    "data8": dict(data=8),
    "fsdp8": dict(fsdp=8),
    "data2 expert2 tensor2": dict(data=2, expert=2, tensor=2),
    "fsdp4 expert2": dict(fsdp=4, expert=2),
    "data2 expert2 pipeline2": dict(data=2, expert=2, pipeline=2, pipeline_microbatches=4),
}

# (experiment in experiments/, topology): the 4K-phase tables in the experiments' docstrings.
AOT_RUNS = [
    ("ling_mini_2_pretrain", "v5p:2x2x4"),
    ("ling_mini_2_pretrain", "tpu7x:2x2x2"),
    ("ling_flash_2_pretrain", "v5p:2x4x4"),
    ("ling_flash_2_pretrain", "tpu7x:2x2x4"),
    ("ling_1t_pretrain", "v5p:4x8x8"),
]


def make_experiment(model, mesh, *, batch: int, seq: int, backend: str, remat: str = "full",
                    capacity_factor: float = 0.0):
    model.update(dict(moe_backend=backend, remat_policy=remat))
    pretrain = dict(kind="pretrain", steps=100, seq_len=seq, batch_size=batch,
                    data=dict(sources=dict(python=dict(kind="builtin_python", split="train"))),
                    lr=dict(kind="wsm", peak_lr=3e-4, warmup_steps=10))
    cfg = experiment(model, tokenizer=dict(kind="builtin", vocab_size=model.vocab_size,
                                           cache_dir=""),
                     phases=[("pretrain", pretrain)], checkpoint=checkpointing(every_steps=100))
    if mesh is not None:
        cfg.mesh = dict(mesh, capacity_factor=capacity_factor)
    return cfg


def _batch(cfg, seed: int) -> dict:
    ph, vocab = cfg.phases.pretrain, cfg.model.vocab_size
    rng = np.random.default_rng(seed)
    shape = (ph.batch_size, ph.seq_len)
    return dict(inputs=rng.integers(2, vocab, shape).astype(np.int32),
                targets=rng.integers(2, vocab, shape).astype(np.int32),
                loss_mask=np.ones(shape, np.float32), segment_ids=np.ones(shape, np.int32),
                positions=np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy())


def cpu_step_times(steps: int = 5) -> None:
    print(f"tiny preset with 5 layers, batch 16 × 128 tokens, fp32, {jax.device_count()} CPU "
          "devices")
    print(f"{'mesh':<26}{'compile s':>10}{'step ms':>10}{'vs 1 device':>13}")
    base = None
    for name, mesh in CPU_MESHES.items():
        model = get_preset("tiny")
        model.num_hidden_layers = 5  # 4 MoE layers: 2 pipeline stages × 2 layers
        cfg = make_experiment(model, mesh, batch=16, seq=128,
                              backend="blocked" if mesh is None else "ep_all_to_all",
                              remat="none")
        fn, opt = lm_step_fn(cfg, "pretrain")
        state = init_state(cfg, opt)
        if mesh is None:
            step = jax.jit(fn, donate_argnums=(0,))
        else:
            plan = plan_for_experiment(cfg, jax.eval_shape(lambda: init_state(cfg, opt)))  # noqa: B023
            step, state = plan.shard_fn(fn), plan.place(state)
        t0 = time.perf_counter()
        state, m = step(state, _batch(cfg, 0))
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(steps):
            state, m = step(state, _batch(cfg, i + 1))
        jax.block_until_ready(m)
        ms = (time.perf_counter() - t0) / steps * 1e3
        base = base or ms
        print(f"{name:<26}{compile_s:>10.1f}{ms:>10.1f}{ms / base:>12.2f}x", flush=True)


def aot_tables() -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # experiments/
    print(f"\n{'experiment (4K phase)':<24}{'topology':<14}{'mesh':<22}{'compile s':>10}"
          f"{'args GB':>9}{'temp GB':>9}{'peak GB':>9}{'HBM GB':>8}  fits")
    for name, topology in AOT_RUNS:
        cfg = importlib.import_module(f"experiments.{name}").get_config()
        r = compile_train_step(cfg, topology_devices(topology), topology=topology,
                               phase="pretrain_4k")
        mesh_s = " ".join(f"{k}{v}" for k, v in r.mesh.items() if v > 1)
        print(f"{name:<24}{topology:<14}{mesh_s:<22}{r.compile_seconds:>10.0f}"
              f"{r.argument_bytes / 1e9:>9.1f}{r.temp_bytes / 1e9:>9.1f}"
              f"{r.peak_bytes / 1e9:>9.1f}{(r.hbm_bytes or 0) / 1e9:>8.0f}  {r.fits} {r.error}",
              flush=True)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aot", action="store_true", help="also compile the presets for TPU")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    cpu_step_times(args.steps)
    if args.aot:
        aot_tables()


if __name__ == "__main__":
    main(sys.argv[1:])
