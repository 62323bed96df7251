"""Time to trace + lower context-parallel splash attention (forward + backward) for Mosaic (TPU).

    python benchmarks/context_mask_setup.py --length 131072 --context 8 [--traces 2]

Splash builds its block tables in Python while tracing, one per static causal offset; under
context parallelism that is 2 × context masks per call. This lowers one attention layer's
gradient on abstract inputs over a v5p:2x2x2 topology's 8 compile-only devices (context × data;
libtpu, no TPU), `--traces` times (a real step traces attention several times: layer kinds,
remat), and prints the seconds of each.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from ling_jax.launch.aot import topology_devices  # noqa: E402
from ling_jax.ops.attention_backends import attend  # noqa: E402
from ling_jax.ops.attention_context import ContextSettings, context_settings  # noqa: E402
from ling_jax.ops.attention_mask import self_attention_mask  # noqa: E402
from ling_jax.ops.attention_splash import mosaic_lowering  # noqa: E402

_LENGTH = flags.DEFINE_integer("length", 131072, "sequence length")
_CONTEXT = flags.DEFINE_integer("context", 8, "context-axis size (8 devices in all)")
_BLOCK = flags.DEFINE_integer("block", 512, "splash tile (query and key)")
_TRACES = flags.DEFINE_integer("traces", 2, "how many times to trace + lower")


def main(argv) -> None:
    del argv
    context = _CONTEXT.value
    devices = np.array(topology_devices("v5p:2x2x2")).reshape(8 // context, context)
    mesh = jax.sharding.Mesh(devices, ("data", "context"), axis_types=(AxisType.Auto,) * 2)
    seq = NamedSharding(mesh, P(None, "context"))
    shape = lambda *s, d=jnp.bfloat16: jax.ShapeDtypeStruct(s, d, sharding=seq)
    q, k, seg = shape(1, _LENGTH.value, 1, 128), shape(1, _LENGTH.value, 1, 128), \
        shape(1, _LENGTH.value, d=jnp.int32)

    def loss(q, k, v, seg):
        mask = self_attention_mask(seg, 1, _LENGTH.value)
        out = attend("splash", q, k, v, mask, block_q=_BLOCK.value, block_kv=_BLOCK.value)
        return out.astype(jnp.float32).sum()

    with jax.set_mesh(mesh), context_settings(ContextSettings("context", ("data",))), \
            mosaic_lowering():
        for i in range(_TRACES.value):
            t0 = time.perf_counter()
            jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k, seg)
            print(f"trace {i}: {time.perf_counter() - t0:.1f} s (T={_LENGTH.value}, "
                  f"context={context}, block={_BLOCK.value})", flush=True)


if __name__ == "__main__":
    app.run(main)
