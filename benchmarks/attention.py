"""Attention fwd + bwd against sequence length: time and peak memory, reference vs tiled.

    python benchmarks/attention.py [--lengths 1024,...,32768] [--backends reference,tiled]
                                   [--dtypes bfloat16,float32] [--budget_gb 6]

Each (backend, dtype, T) runs in its own process so its peak RSS (os.wait4) is its own; XLA's
planned temp buffer is printed beside it. A point whose compiled buffers exceed --budget_gb is
reported as out of memory instead of run (the CPU is shared: the reference's [T, T] scores reach
tens of GiB), and an allocation failure at run time is caught and printed the same way.
Shape: one sequence, bench-mini's attention (8 heads, 2 KV heads, head_dim 64), causal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384", "32768"],
                             "sequence lengths")
_BACKENDS = flags.DEFINE_list("backends", ["reference", "tiled"], "attention backends")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "compute dtypes")
_HEADS = flags.DEFINE_integer("heads", 8, "query heads")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 2, "key/value heads")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "head dim")
_BLOCK = flags.DEFINE_integer("block", 512, "tiled: query and key tile")
_BUDGET = flags.DEFINE_float("budget_gb", 6.0, "skip points whose XLA buffers exceed this")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per point (the median is printed)")
_POINT = flags.DEFINE_string("point", None, "internal: run one 'backend,dtype,T' and print JSON")


def run_point(backend: str, dtype_name: str, length: int) -> dict:
    """Compile, check the budget, then time fwd + bwd of one point (in this process)."""
    import jax
    import jax.numpy as jnp

    from ling_jax.ops.attention_backends import attend
    from ling_jax.ops.attention_mask import self_attention_mask

    dtype = jnp.dtype(dtype_name)
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (1, length, _HEADS.value, _HEAD_DIM.value), dtype)
    k, v = (jax.random.normal(key, (1, length, _KV_HEADS.value, _HEAD_DIM.value), dtype)
            for key in keys[1:3])
    probe = jax.random.normal(keys[3], q.shape, dtype)
    mask = self_attention_mask(None, 1, length)

    def loss(q, k, v):
        out = attend(backend, q, k, v, mask, block_q=_BLOCK.value, block_kv=_BLOCK.value)
        return jnp.sum(out.astype(jnp.float32) * probe)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    memory = compiled.memory_analysis()
    planned = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    result = {"planned_bytes": planned}
    if planned > _BUDGET.value * 2**30:
        return {**result, "error": f"out of memory: XLA plans {planned / 2**30:.1f} GiB "
                                   f"> budget {_BUDGET.value:g} GiB"}
    times = []
    try:
        for _ in range(_REPEATS.value if length <= 8192 else 1):
            start = time.perf_counter()
            jax.block_until_ready(compiled(q, k, v))
            times.append(time.perf_counter() - start)
    except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED and kin
        return {**result, "error": f"failed: {str(e).splitlines()[0][:120]}"}
    return {**result, "seconds": sorted(times)[len(times) // 2]}


def _child(backend: str, dtype: str, length: int) -> tuple[dict, float]:
    """(the point's JSON, its peak RSS in GiB) from a fresh process."""
    cmd = [sys.executable, __file__, f"--point={backend},{dtype},{length}"]
    cmd += [f"--{f}={flags.FLAGS[f].value}" for f in ("heads", "kv_heads", "head_dim", "block",
                                                       "budget_gb", "repeats")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"process exited with {proc.returncode} (killed for memory?)"}, 0.0
    return json.loads(lines[-1]), usage.ru_maxrss / 2**20  # KiB -> GiB


def main(argv) -> None:
    del argv
    if _POINT.value:
        backend, dtype, length = _POINT.value.split(",")
        print(json.dumps(run_point(backend, dtype, int(length))))
        return
    print(f"attention fwd+bwd, 1 x T, {_HEADS.value} heads / {_KV_HEADS.value} KV, head_dim "
          f"{_HEAD_DIM.value}, causal; tiled block {_BLOCK.value}; budget {_BUDGET.value:g} GiB")
    print(f"{'backend':<10} {'dtype':<9} {'T':>6} {'time':>10} {'peak RSS':>9} {'XLA plan':>9}")
    for length in (int(t) for t in _LENGTHS.value):
        for dtype in _DTYPES.value:
            for backend in _BACKENDS.value:
                point, rss = _child(backend, dtype, length)
                plan = f"{point['planned_bytes'] / 2**30:7.2f} G" if "planned_bytes" in point else ""
                shown = (f"{point['seconds'] * 1e3:8.0f} ms" if "seconds" in point
                         else point["error"])
                rss_text = f"{rss:7.2f} G" if "seconds" in point else ""
                print(f"{backend:<10} {dtype:<9} {length:>6} {shown:>10} {rss_text:>9} {plan:>9}",
                      flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    app.run(main)
