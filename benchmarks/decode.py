"""Greedy KV-cache decoding throughput beside the upstream PyTorch `generate`, in one run.

    python benchmarks/decode.py [--model bench_mini] [--batch 32] [--prompt 64] [--new 128]

Both sides take [B, P] random prompt ids and greedily generate exactly N new tokens per row (no
stop token) with random weights of the same architecture in --dtype. Ours: the jitted
`ling_jax.model.decode.generate` (prefill, then one lax.while_loop over a fixed-shape KV cache,
argmax on device). Upstream: `BailingMoeV2ForCausalLM.generate(do_sample=False)` with its own
`DynamicCache` (transformers 4.57.1's default cache has no slot for the MTP layer). A call covers
prefill + N steps on both sides; new tokens/s = B·N / median seconds, ms/token = seconds / N (one
step of the whole batch). MFU counts the forward FLOPs of the new tokens (2·N_active, no MTP, plus
attention at the mean context length) against the median measured peak; decoding a batch of 32 is
memory-bound, so MFU is low by nature. Timings alternate ours / upstream; the load is printed.
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
from ling_jax.model import decode  # noqa: E402
from ling_jax.model.moe import ExpertBias  # noqa: E402
from ling_jax.model.transformer import LingForCausalLM  # noqa: E402
from ling_jax.train import flops  # noqa: E402

_MODEL = flags.DEFINE_string("model", "bench_mini", "model preset")
_BATCH = flags.DEFINE_integer("batch", 32, "sequences decoded together")
_PROMPT = flags.DEFINE_integer("prompt", 64, "prompt tokens per sequence")
_NEW = flags.DEFINE_integer("new", 128, "new tokens per sequence")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "param + compute dtype")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repetitions per side (median reported)")
_UPSTREAM = flags.DEFINE_bool("upstream", True, "also time the upstream PyTorch generate")


def ours(cfg, prompts: np.ndarray, new: int):
    """A blocking callable: greedy generation of `new` tokens for every prompt row."""
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params, biases = nnx.split(model, nnx.Param, ExpertBias)
    fn = decode.make_generate_fn(graphdef, max_new_tokens=new,
                                 sampling=decode.SamplingParams(temperature=0.0))
    ids = jax.numpy.asarray(prompts)
    lengths = jax.numpy.full((prompts.shape[0],), prompts.shape[1], jax.numpy.int32)
    key = jax.random.key(0)

    def run():
        out = fn(params, biases, ids, lengths, key, jax.numpy.int32(new))
        return jax.block_until_ready(out.tokens)

    return run


def upstream(cfg, prompts: np.ndarray, new: int, dtype: str):
    """A callable running upstream greedy `generate` with a DynamicCache, or (None, reason)."""
    modeling, reason = common.load_upstream()
    if modeling is None:
        return None, reason
    import torch
    from transformers.cache_utils import DynamicCache

    model = common.upstream_model(modeling, cfg, dtype)
    ids = torch.from_numpy(prompts.astype(np.int64))
    mask = torch.ones_like(ids)

    def run(tokens: int = new):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, use_cache=True,
                                 past_key_values=DynamicCache(), pad_token_id=0)
        if out.shape[1] != prompts.shape[1] + tokens:
            raise RuntimeError(f"upstream generated {out.shape[1] - prompts.shape[1]} tokens, "
                               f"expected {tokens}")
        return out

    return run, None


def main(argv) -> None:
    del argv
    cfg = get_preset(_MODEL.value)
    cfg.update(dict(dtype=_DTYPE.value, param_dtype=_DTYPE.value))
    batch, new = _BATCH.value, _NEW.value
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, _PROMPT.value),
                                                dtype=np.int32)
    peak = common.measure_peak()
    print(f"decode {_MODEL.value} batch {batch}, {_PROMPT.value}-token prompts, {new} new tokens, "
          f"greedy, {_DTYPE.value}; {peak.describe()}; {common.machine_load()}")
    context = _PROMPT.value + new // 2  # mean attended length of a new token
    new_flops = flops.training_flops_per_token(cfg, context, include_mtp=False) / 3 * batch * new
    fns, names = [ours(cfg, prompts, new)], ["ling-jax"]
    fns[0]()  # compile
    # Upstream is eager (nothing to compile): a short warm-up.
    reason = common.add_upstream(_UPSTREAM.value,
                                 lambda: upstream(cfg, prompts, new, _DTYPE.value), fns, names,
                                 warm_up=lambda f: f(2))
    cold: list[common.Timing] = []
    times = common.alternate(fns, _REPEATS.value, cold)
    for name, t, c in zip(names, times, cold, strict=True):
        print(f"  {name:<9} {t.median:7.2f} s ({t.spread()})  {batch * new / t.median:8,.0f} "
              f"new tok/s  {t.median / new * 1e3:7.1f} ms/token (whole batch)  "
              f"MFU {flops.mfu(new_flops, t.median, peak.median, 1):5.1%}"
              + f"  (cold first call {c.median:.2f} s)")
    theirs = batch * new / times[1].median if len(times) > 1 else None
    if theirs is None:
        print(f"  {reason}")
    print(common.ratio_line("decode", batch * new / times[0].median, theirs, "new tok/s", 3.0)
          + f"; {common.machine_load()}")


if __name__ == "__main__":
    host_allocator.restart_with_tuned_allocator()
    app.run(main)
