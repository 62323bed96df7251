"""Prefill / forward-only throughput beside the upstream PyTorch code, in one run.

    python benchmarks/forward.py [--model bench_mini] [--batch 4] [--length 512] [--repeats 5]

Both sides turn [B, T] token ids into fp32 logits [B, T, V] with random weights of the same
architecture, in --dtype (parameters and activations). Ours: one jitted forward without the MTP
layers (nothing reads them at inference). Upstream: `BailingMoeV2ForCausalLM` in eval mode under
torch.no_grad (its sorted-token `moe_infer`, SDPA attention); its forward always runs its MTP layer
too, which is how the upstream code serves. Timings alternate ours / upstream; medians, the ratio,
MFU (forward FLOPs = 1/3 of the training count, no MTP) against the median measured peak, and the
machine load are printed. Figures only, never pass/fail.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from ling_jax.cli import host_allocator  # noqa: E402
from ling_jax.config import get_preset  # noqa: E402
from ling_jax.model.transformer import LingForCausalLM  # noqa: E402
from ling_jax.train import flops  # noqa: E402

_MODEL = flags.DEFINE_string("model", "bench_mini", "model preset")
_BATCH = flags.DEFINE_integer("batch", 4, "sequences")
_LENGTH = flags.DEFINE_integer("length", 512, "tokens per sequence")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "param + compute dtype")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repetitions per side (median reported)")
_UPSTREAM = flags.DEFINE_bool("upstream", True, "also time the upstream PyTorch code")


def ours(cfg, ids: np.ndarray):
    """A blocking callable running our jitted forward on `ids` (compiled on the first call)."""
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids_BT):
        return nnx.merge(graphdef, state)(ids_BT, mtp=False, frozen=True).logits

    ids_BT = jax.numpy.asarray(ids)
    return lambda: forward(state, ids_BT).block_until_ready()


def upstream(cfg, ids: np.ndarray, dtype: str):
    """A callable running the upstream forward, or (None, reason)."""
    modeling, reason = common.load_upstream()
    if modeling is None:
        return None, reason
    import torch

    model = common.upstream_model(modeling, cfg, dtype)
    ids_BT = torch.from_numpy(ids.astype(np.int64))

    def run():
        with torch.no_grad():
            return model(input_ids=ids_BT, use_cache=False).logits.float()

    return run, None


def main(argv) -> None:
    del argv
    cfg = get_preset(_MODEL.value)
    cfg.update(dict(dtype=_DTYPE.value, param_dtype=_DTYPE.value))
    batch, length = _BATCH.value, _LENGTH.value
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, length), dtype=np.int32)
    peak = common.measure_peak()
    print(f"forward {_MODEL.value} {batch}x{length} {_DTYPE.value}; {peak.describe()}; "
          f"{common.machine_load()}")
    fns, names = [ours(cfg, ids)], ["ling-jax"]
    fns[0]()  # compile
    reason = common.add_upstream(_UPSTREAM.value, lambda: upstream(cfg, ids, _DTYPE.value), fns, names)
    cold: list[common.Timing] = []
    times = common.alternate(fns, _REPEATS.value, cold)
    tokens = batch * length
    fwd_flops = flops.training_flops_per_step(cfg, length, tokens, include_mtp=False) / 3
    for name, t, c in zip(names, times, cold, strict=True):
        print(f"  {name:<9} {t.median * 1e3:8.1f} ms ({t.spread()})  {tokens / t.median:9,.0f} "
              f"tok/s  MFU {flops.mfu(fwd_flops, t.median, peak.median, 1):5.1%}"
              + f"  (cold first call {c.median * 1e3:.1f} ms)")
    theirs = tokens / times[1].median if len(times) > 1 else None
    if theirs is None:
        print(f"  {reason}")
    print(common.ratio_line("forward", tokens / times[0].median, theirs, "tok/s", 1.5)
          + f"; {common.machine_load()}")


if __name__ == "__main__":
    host_allocator.restart_with_tuned_allocator()
    app.run(main)
