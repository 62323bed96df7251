"""Grouped-matmul benchmark: time and TFLOP/s per backend and shape on the default device.

    JAX_PLATFORMS=cpu python benchmarks/gmm.py                     # small shapes, interpret mode
    python benchmarks/gmm.py --shapes=8192x8192x2048x32 --iters=20  # on a TPU

Backends: the FP8 Pallas kernel alone on pre-quantised operands (`pallas_fp8_gmm`), the full
FP8 forward including quantisation (`fp8_grouped_matmul`), `jax.lax.ragged_dot` in bf16, a bf16
padded einsum (tokens scattered into [G, capacity, k]) and, on TPU only, JAX's megablox bf16 gmm.
Off TPU the Pallas kernels run in interpret mode, so their figures there are informational only.
The rel_err column is the relative Frobenius error against an f32 ragged_dot.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from pallas_kernels import fp8_grouped_matmul, gmm, quantize_blocks, quantize_rows

_SHAPES = flags.DEFINE_string(
    "shapes", None, "Comma-separated MxKxNxG (tokens x hidden x expert width x experts); "
    "default depends on the platform."
)  # fmt: skip
_BACKENDS = flags.DEFINE_list("backends", None, "Subset of backends to run (default: all).")
_ITERS = flags.DEFINE_integer("iters", 5, "Timed iterations per backend and shape.")
_TILING = flags.DEFINE_string("tiling", "256,512,512", "Pallas tiling tm,tk,tn.")

# Off TPU the interpreter runs every grid step as XLA ops: keep those shapes tiny.
DEFAULT_SHAPES = {
    "tpu": "8192x8192x2048x32,8192x2048x512x32,4096x7168x2048x16",
    "other": "512x512x256x8,1024x1024x512x8",
}

Shape = tuple[int, int, int, int]
Inputs = dict[str, jax.Array]


def parse_shapes(spec: str) -> list[Shape]:
    shapes = []
    for item in spec.split(","):
        dims = tuple(int(d) for d in item.lower().split("x"))
        if len(dims) != 4:
            raise ValueError(f"--shapes entry {item!r} must be MxKxNxG, e.g. 8192x8192x2048x32")
        shapes.append(dims)
    return shapes


def make_inputs(shape: Shape, seed: int = 0) -> Inputs:
    """bf16 x [m, k], w [G, k, n] and an imbalanced routing split of the m rows (some empty)."""
    m, k, n, g = shape
    rng = np.random.default_rng(seed)
    share = rng.dirichlet(np.full(g, 0.7))
    sizes = np.floor(share * m).astype(np.int32)
    sizes[np.argmax(sizes)] += m - sizes.sum()
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((g, k, n)) / np.sqrt(k), jnp.bfloat16)
    return {"x": x, "w": w, "group_sizes": jnp.asarray(sizes)}


def _pallas_fp8_gmm(inp: Inputs, tiling, interpret: bool) -> Callable[[], jax.Array]:
    x_q, x_s = jax.jit(quantize_rows)(inp["x"])
    w_q, w_s = jax.jit(quantize_blocks)(inp["w"])
    fn = jax.jit(lambda *a: gmm(*a, tiling=tiling, interpret=interpret))
    return lambda: fn(x_q, x_s, w_q, w_s, inp["group_sizes"])


def _fp8_grouped_matmul(inp: Inputs, tiling, interpret: bool) -> Callable[[], jax.Array]:
    fn = jax.jit(lambda x, w, s: fp8_grouped_matmul(x, w, s, tiling=tiling, interpret=interpret))
    return lambda: fn(inp["x"], inp["w"], inp["group_sizes"])


def _ragged_dot(inp: Inputs, tiling, interpret: bool) -> Callable[[], jax.Array]:
    fn = jax.jit(
        lambda x, w, s: jax.lax.ragged_dot(x, w, s, preferred_element_type=jnp.float32).astype(jnp.bfloat16)
    )
    return lambda: fn(inp["x"], inp["w"], inp["group_sizes"])


def _padded_einsum(inp: Inputs, tiling, interpret: bool) -> Callable[[], jax.Array]:
    sizes = np.asarray(inp["group_sizes"])
    capacity = int(-(-sizes.max() // 128) * 128)  # static: the largest group, 128-aligned
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    row_group = np.repeat(np.arange(len(sizes)), sizes)
    slot = jnp.asarray(row_group * capacity + np.arange(sizes.sum()) - starts[row_group])

    def run(x, w):
        g, k, n = w.shape
        buf = jnp.zeros((g * capacity, k), x.dtype).at[slot].set(x[: slot.shape[0]])
        out = jnp.einsum("gck,gkn->gcn", buf.reshape(g, capacity, k), w, preferred_element_type=jnp.float32)
        rows = out.reshape(g * capacity, n)[slot].astype(jnp.bfloat16)
        return jnp.zeros((x.shape[0], n), rows.dtype).at[: rows.shape[0]].set(rows)

    fn = jax.jit(run)
    return lambda: fn(inp["x"], inp["w"])


def _megablox(inp: Inputs, tiling, interpret: bool) -> Callable[[], jax.Array]:
    from jax.experimental.pallas.ops.tpu.megablox import gmm as megablox_gmm

    m = inp["x"].shape[0]
    tm = min(tiling[0], m)
    fn = jax.jit(
        lambda x, w, s: megablox_gmm(
            x, w, s, preferred_element_type=jnp.bfloat16, tiling=(tm, tiling[1], tiling[2])
        )
    )
    return lambda: fn(inp["x"], inp["w"], inp["group_sizes"])


BACKENDS: dict[str, Callable] = {
    "pallas_fp8_gmm": _pallas_fp8_gmm,
    "fp8_grouped_matmul": _fp8_grouped_matmul,
    "ragged_dot_bf16": _ragged_dot,
    "padded_einsum_bf16": _padded_einsum,
    "megablox_bf16": _megablox,
}
TPU_ONLY = {"megablox_bf16"}


def time_call(call: Callable[[], jax.Array], iters: int) -> tuple[float, jax.Array]:
    """Median seconds per call after one warm-up (compile) call."""
    out = jax.block_until_ready(call())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def rel_err(out: jax.Array, ref: np.ndarray) -> float:
    diff = np.asarray(out, np.float64) - ref
    return float(np.linalg.norm(diff) / np.linalg.norm(ref))


def main(argv: list[str]) -> None:
    del argv
    platform = jax.default_backend()
    on_tpu = platform == "tpu"
    shapes = parse_shapes(_SHAPES.value or DEFAULT_SHAPES["tpu" if on_tpu else "other"])
    names = _BACKENDS.value or [b for b in BACKENDS if on_tpu or b not in TPU_ONLY]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        raise ValueError(f"--backends: unknown {unknown}; choose from {sorted(BACKENDS)}")
    tiling = tuple(int(t) for t in _TILING.value.split(","))
    interpret = not on_tpu
    print(f"device: {jax.devices()[0].device_kind} ({platform}); pallas interpret={interpret}")
    header = f"{'backend':<20} {'M x K x N x G':<24} {'ms':>10} {'TFLOP/s':>9} {'rel_err':>9}"
    print(header + "\n" + "-" * len(header))
    for shape in shapes:
        inp = make_inputs(shape)
        ref_fn = jax.jit(lambda x, w, s: jax.lax.ragged_dot(x, w, s, preferred_element_type=jnp.float32))
        ref = np.asarray(ref_fn(inp["x"], inp["w"], inp["group_sizes"]), np.float64)
        flops = 2.0 * int(np.asarray(inp["group_sizes"]).sum()) * shape[1] * shape[2]
        for name in names:
            seconds, out = time_call(BACKENDS[name](inp, tiling, interpret), _ITERS.value)
            label = "x".join(map(str, shape))
            print(
                f"{name:<20} {label:<24} {seconds * 1e3:>10.3f} "
                f"{flops / seconds / 1e12:>9.3f} {rel_err(out, ref):>9.2e}"
            )


if __name__ == "__main__":
    app.run(main)
