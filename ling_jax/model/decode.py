"""KV-cache decoding for Ling 2.0: prefill the prompts, then one fixed-shape jitted decode loop.

Layout. Prompts are LEFT-padded to a common length P (`left_pad`), so every row writes its next
token at the same buffer index P + i and the cache has one static shape
[layers, B, S = P + max_new_tokens, kv_heads, head_dim] per stack (dense, MoE) — GQA-sized. Padding
keys are masked out and RoPE positions restart at each row's first real token, so a row's logits
equal those of the unpadded sequence through the full forward (`LingForCausalLM.__call__`).

Log-probs. `Generation.logprobs` is the log-prob of each sampled token under the *policy*
log_softmax(logits / T) at the sampling temperature T, without the top-k / top-p truncation: the
quantity the RL importance ratio compares with the trained model's log_softmax(logits / T).
Greedy decoding (T = 0) reports log_softmax(logits) (T = 1).

Stops. A row stops after emitting any of `stop_ids` (the stop token is part of the response and
counts in `lengths`) or after `max_steps` tokens; later slots hold `pad_id` with log-prob 0.
MTP layers are not used for decoding. This module changes nothing in the model's modules: it
calls their pieces (norms, `Attention.qkv/output`, MLP/MoE) around a cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ling_jax.model.rotary import rope_cos_sin, rope_frequencies
from ling_jax.ops import scan_bits
from ling_jax.ops.attention_mask import AttentionMask

Cache = dict[str, tuple[jax.Array, jax.Array]]  # stack name -> (k, v) [L, B, S, K, H]
_STACKS = ("dense_layers", "moe_layers")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 and top_p 1 disable truncation; stop_ids end a row."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")


class Generation(NamedTuple):
    tokens: jax.Array  # [B, N] int32, pad_id after a row stopped
    logprobs: jax.Array  # [B, N] fp32 policy log-probs (see module doc), 0 after a row stopped
    lengths: jax.Array  # [B] int32 generated tokens, stop token included
    finished: jax.Array  # [B] bool: the row emitted a stop token


def left_pad(prompts: Sequence[Sequence[int]], length: int | None = None,
             pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, P] int32 left-padded, lengths [B] int32); P = longest prompt unless given."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    longest = max(len(p) for p in prompts)
    length = longest if length is None else int(length)
    if longest > length:
        raise ValueError(f"a prompt has {longest} tokens, more than the prompt length {length}; "
                         "raise the prompt length or shorten the prompt")
    ids = np.full((len(prompts), length), pad_id, np.int32)
    for row, p in enumerate(prompts):
        ids[row, length - len(p):] = p
    return ids, np.asarray([len(p) for p in prompts], np.int32)


def init_cache(model, batch: int, max_len: int) -> Cache:
    """Zero caches for each stack the model has, in the model's activation dtype."""
    cfg = model.cfg
    shape = (batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    cache = {}
    for name, layers in zip(_STACKS, (model.num_dense, model.num_moe), strict=True):
        if layers:
            zeros = jnp.zeros((layers, *shape), model.dtype)
            cache[name] = (zeros, zeros)
    return cache


def _layer_cached(layer, x_BTD, cos, sin, mask: AttentionMask, k_BSKH, v_BSKH, index):
    """DecoderLayer.__call__ with this chunk's k/v written into the cache at `index`. The prefill
    (index 0) runs the configured attention backend; decode steps (a query offset) the reference,
    whose [B,1,T,S] mask is linear in S for one query."""
    q, k, v = layer.attn.qkv(layer.input_norm(x_BTD), cos, sin)
    k_BSKH = jax.lax.dynamic_update_slice(k_BSKH, k.astype(k_BSKH.dtype), (0, index, 0, 0))
    v_BSKH = jax.lax.dynamic_update_slice(v_BSKH, v.astype(v_BSKH.dtype), (0, index, 0, 0))
    backend = None if mask.q_offset is None else "reference"
    x_BTD = x_BTD + layer.attn.output(layer.attn.attend(q, k_BSKH, v_BSKH, mask, backend))
    h = layer.post_attn_norm(x_BTD)
    # MoE returns (y, counts, logits, dropped); decoding never differentiates.
    y = layer.mlp(h, inference=True)[0] if layer.use_moe else layer.mlp(h)
    return x_BTD + y, k_BSKH, v_BSKH


class FrozenStack(NamedTuple):
    """A layer stack split for decoding: its state's bf16 leaves as raw bits (`ops.scan_bits`)."""

    graphdef: nnx.GraphDef
    bits: Any
    dtypes: Any


def frozen_stacks(model) -> dict[str, FrozenStack]:
    """Each layer stack the model has, split and bit-cast once: converting copies the whole
    stack, so `generate` does it before its decode loop instead of on every step."""
    out = {}
    for name in _STACKS:
        stack = getattr(model, name)
        if stack is not None:
            graphdef, state = nnx.split(stack)
            out[name] = FrozenStack(graphdef, scan_bits.to_bits(state), scan_bits.dtypes_of(state))
    return out


def unroll_layers() -> bool:
    """Decode layers unrolled on XLA:CPU: there a scanned layer's weights are copied out of the
    stack each step (the dynamic slice is materialised: ~2 ms per 16 MB expert projection on
    bench-mini, 44 of 87 ms per step), while static slices feed the matmuls directly."""
    return jax.default_backend() == "cpu"


def _stack_cached(stack: FrozenStack, x_BTD, cos, sin, mask, kv: tuple[jax.Array, jax.Array],
                  index, *, unroll: bool | None = None):
    """The stacked layers in order with the cache as input and output (scanned, or unrolled as
    `unroll_layers` says). Weights and cache are read as raw bits (`ops.scan_bits`): decoding
    never differentiates."""
    kv_dtypes = scan_bits.dtypes_of(kv)

    def body(x, xs):
        layer_bits, k, v = xs
        layer_state = scan_bits.from_bits(layer_bits, stack.dtypes)
        k, v = scan_bits.from_bits((k, v), kv_dtypes)
        layer = nnx.merge(stack.graphdef, layer_state)
        x, k, v = _layer_cached(layer, x, cos, sin, mask, k, v, index)
        return x, scan_bits.to_bits((k, v))

    xs = (stack.bits, *scan_bits.to_bits(kv))
    if unroll if unroll is not None else unroll_layers():
        outs = []
        for i in range(kv[0].shape[0]):
            x_BTD, kv_i = body(x_BTD, jax.tree.map(lambda a, i=i: a[i], xs))
            # A scan step's boundary: without it XLA fuses across layers and drops bf16
            # round trips, so the values would differ from the scan's by an ulp.
            x_BTD = jax.lax.optimization_barrier(x_BTD)
            outs.append(kv_i)
        kv_bits = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    else:
        x_BTD, kv_bits = jax.lax.scan(body, x_BTD, xs)
    return x_BTD, scan_bits.from_bits(kv_bits, kv_dtypes)


def forward_cached(model, ids_BT, positions_BT, key_valid_BS, index, cache: Cache,
                   stacks: dict[str, FrozenStack] | None = None):
    """Logits [B, T, V] of a chunk written at buffer index `index` (queries see keys <= own).

    Padding keys (segment 0) are seen only by padding queries, as in the packed forward.
    stacks: `frozen_stacks(model)`, computed here when not given."""
    length = ids_BT.shape[1]
    stacks = frozen_stacks(model) if stacks is None else stacks
    inv_freq, scaling = rope_frequencies(model.cfg)
    cos, sin = rope_cos_sin(positions_BT, inv_freq, scaling, model.dtype)
    kv_segment_BS = key_valid_BS.astype(jnp.int32)
    q_segment_BT = jax.lax.dynamic_slice_in_dim(kv_segment_BS, index, length, axis=1)
    static_start = isinstance(index, int) and index == 0
    mask = AttentionMask(q_segment_BT, kv_segment_BS, None if static_start else index)
    x = jnp.take(model.embed[...], ids_BT, axis=0).astype(model.dtype)
    new_cache = {}
    for name in _STACKS:
        if name in cache:
            x, new_cache[name] = _stack_cached(stacks[name], x, cos, sin, mask, cache[name], index)
    return model.logits(model.final_norm(x)), new_cache


def prefill(model, prompt_ids_BP, prompt_lengths_B, max_len: int,
            stacks: dict[str, FrozenStack] | None = None):
    """Runs the left-padded prompts: (next-token logits [B, V], cache, key_valid [B, S])."""
    batch, length = prompt_ids_BP.shape
    pad_B = length - prompt_lengths_B
    key_valid_BS = jnp.arange(max_len)[None, :] >= pad_B[:, None]
    positions_BP = jnp.maximum(jnp.arange(length)[None, :] - pad_B[:, None], 0)
    logits, cache = forward_cached(model, prompt_ids_BP, positions_BP, key_valid_BS, 0,
                                   init_cache(model, batch, max_len), stacks)
    return logits[:, -1], cache, key_valid_BS


def policy_logprobs(logits_BV: jax.Array, temperature: float) -> jax.Array:
    """log_softmax(logits / T) in fp32 (T = 0, greedy, uses T = 1)."""
    scale = temperature if temperature > 0 else 1.0
    return jax.nn.log_softmax(logits_BV.astype(jnp.float32) / scale, axis=-1)


def truncate_logits(logits_BV: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf."""
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth = jax.lax.top_k(logits_BV, top_k)[0][..., -1:]
        logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
    if top_p < 1.0:
        sorted_BV = -jnp.sort(-logits_BV, axis=-1)
        probs = jax.nn.softmax(sorted_BV, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly larger logits
        kept = jnp.where(before < top_p, sorted_BV, jnp.inf)  # the first one is always kept
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < threshold, -jnp.inf, logits_BV)
    return logits_BV


def sample_logits(logits_BV: jax.Array, key: jax.Array,
                  sampling: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """(token [B] int32, its policy log-prob [B]) from next-token logits."""
    logp_BV = policy_logprobs(logits_BV, sampling.temperature)
    if sampling.temperature == 0:
        token = jnp.argmax(logits_BV, axis=-1)
    else:
        truncated = truncate_logits(logp_BV, sampling.top_k, sampling.top_p)
        token = jax.random.categorical(key, truncated, axis=-1)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(logp_BV, token[:, None], axis=-1)[:, 0]


class _Carry(NamedTuple):
    step: jax.Array
    logits: jax.Array
    cache: Cache
    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    done: jax.Array


def _repeat_rows(tree, group_size: int, axis_of):
    """Every batch row repeated group_size times in place (row p -> rows p*G .. p*G+G-1)."""
    return jax.tree.map(lambda a: jnp.repeat(a, group_size, axis=axis_of(a)), tree)


def generate(model, prompt_ids_BP, prompt_lengths_B, key, *, max_new_tokens: int,
             sampling: SamplingParams, max_steps: jax.Array | int | None = None,
             group_size: int = 1) -> Generation:
    """Samples up to `max_steps` (<= max_new_tokens, may be traced) tokens per row; jit-able.

    group_size G > 1: the B prompts are prefilled once and each is decoded as G rows
    (row b*G + g is sample g of prompt b), as an RL group; the result has B*G rows."""
    batch, prompt_len = prompt_ids_BP.shape
    max_steps = max_new_tokens if max_steps is None else jnp.minimum(max_steps, max_new_tokens)
    stacks = frozen_stacks(model)  # once, outside the loop
    logits, cache, key_valid = prefill(model, prompt_ids_BP, prompt_lengths_B,
                                       prompt_len + max_new_tokens, stacks)
    if group_size > 1:  # cache leaves are [layers, B, S, K, H]; the rest lead with B
        batch *= group_size
        cache = _repeat_rows(cache, group_size, lambda a: 1)
        logits, key_valid, prompt_lengths_B = _repeat_rows(
            (logits, key_valid, prompt_lengths_B), group_size, lambda a: 0)
    stop_ids = jnp.asarray(sampling.stop_ids or (-1,), jnp.int32)

    def cond(c: _Carry):
        return (c.step < max_steps) & ~jnp.all(c.done)

    def body(c: _Carry) -> _Carry:
        token, logp = sample_logits(c.logits, jax.random.fold_in(key, c.step), sampling)
        live = ~c.done
        token = jnp.where(live, token, sampling.pad_id)
        tokens = c.tokens.at[:, c.step].set(token)
        logprobs = c.logprobs.at[:, c.step].set(jnp.where(live, logp, 0.0))
        done = c.done | (live & jnp.any(token[:, None] == stop_ids[None, :], axis=-1))
        positions = (prompt_lengths_B + c.step)[:, None]
        step_logits, cache = forward_cached(model, token[:, None], positions, key_valid,
                                            prompt_len + c.step, c.cache, stacks)
        return _Carry(c.step + 1, step_logits[:, 0], cache, tokens, logprobs,
                      c.lengths + live.astype(jnp.int32), done)

    init = _Carry(jnp.zeros((), jnp.int32), logits, cache,
                  jnp.full((batch, max_new_tokens), sampling.pad_id, jnp.int32),
                  jnp.zeros((batch, max_new_tokens), jnp.float32),
                  jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
    out = jax.lax.while_loop(cond, body, init)
    return Generation(out.tokens, out.logprobs, out.lengths, out.done)


def make_generate_fn(graphdef, *, max_new_tokens: int, sampling: SamplingParams,
                     group_size: int = 1):
    """jit(params, biases, prompt_ids, prompt_lengths, key, max_steps) -> Generation.

    `graphdef` splits the model as (graphdef, Param state, ExpertBias state) — e.g.
    ling_jax.train.phases.phase_graphdef. One compile per (batch, prompt length); max_steps is
    traced, so changing it never recompiles. group_size: see `generate`.
    """

    def run(params, biases, prompt_ids, prompt_lengths, key, max_steps):
        model = nnx.merge(graphdef, params, biases)
        return generate(model, prompt_ids, prompt_lengths, key, max_new_tokens=max_new_tokens,
                        sampling=sampling, max_steps=max_steps, group_size=group_size)

    return jax.jit(run)


@nnx.jit(static_argnames=("max_new_tokens", "sampling"))
def _generate_model(model, prompt_ids, prompt_lengths, key, *, max_new_tokens, sampling):
    return generate(model, prompt_ids, prompt_lengths, key, max_new_tokens=max_new_tokens,
                    sampling=sampling)


def generate_text_ids(model, prompts: Sequence[Sequence[int]], key: jax.Array, *,
                      max_new_tokens: int, sampling: SamplingParams) -> list[list[int]]:
    """Generated ids per prompt (stop token dropped) for a live nnx model: the CLI's entry."""
    ids, lengths = left_pad(prompts, pad_id=sampling.pad_id)
    out = _generate_model(model, jnp.asarray(ids), jnp.asarray(lengths), key,
                          max_new_tokens=max_new_tokens, sampling=sampling)
    tokens, counts, finished = jax.device_get((out.tokens, out.lengths, out.finished))
    return [row[: n - int(f)].tolist() for row, n, f in zip(tokens, counts, finished, strict=True)]
