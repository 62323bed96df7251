"""Long context on CPU: the tiny model's forward, or `generate` after a T-token prompt, with peak RSS.

    python benchmarks/long_context.py --length 32768 --attention_backend tiled [--mode generate]

Prints wall time and this process's peak resident memory (ru_maxrss; one measurement per run).
With the reference backend the [B,K,T,G,T] fp32 scores alone are 16 GiB at T = 32K on tiny.
"""

from __future__ import annotations

import os
import resource
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from ling_jax.config import get_preset  # noqa: E402
from ling_jax.model import decode  # noqa: E402
from ling_jax.model.transformer import LingForCausalLM  # noqa: E402

_LENGTH = flags.DEFINE_integer("length", 32768, "tokens in the sequence / prompt")
_BACKEND = flags.DEFINE_string("attention_backend", "tiled", "attention backend")
_BLOCK = flags.DEFINE_integer("block", 512, "attention tile (query and key)")
_MODE = flags.DEFINE_enum("mode", "forward", ["forward", "generate"], "what to run")
_NEW = flags.DEFINE_integer("max_new_tokens", 4, "generate: tokens to sample")


def main(argv) -> None:
    del argv
    cfg = get_preset("tiny")
    cfg.update(dict(attention_backend=_BACKEND.value, attention_block_q=_BLOCK.value,
                    attention_block_kv=_BLOCK.value, max_position_embeddings=_LENGTH.value))
    model = LingForCausalLM(cfg, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(1), (1, _LENGTH.value), 2, cfg.vocab_size)
    start = time.perf_counter()
    if _MODE.value == "forward":
        out = nnx.jit(lambda m, i: m(i).logits[:, -1])(model, ids)
    else:
        sampling = decode.SamplingParams(temperature=0.0)
        out = decode.generate_text_ids(model, [ids[0].tolist()], jax.random.key(0),
                                       max_new_tokens=_NEW.value, sampling=sampling)
        out = jnp.asarray(out)
    jax.block_until_ready(out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"tiny {_MODE.value} T={_LENGTH.value} attention={_BACKEND.value} block={_BLOCK.value}: "
          f"{seconds:.1f} s (compile included), peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    app.run(main)
