"""Rollouts of the RL phase: prompts → G samples each (KV-cache decoding) → rewards → the batch.

Layout of one rollout row (fixed shapes, one compile): the prompt LEFT-padded to P tokens, then a
response buffer of R slots: tokens [N, P + R]. Response slot j is predicted by the logits at buffer
index P - 1 + j. segment_ids are 1 on the real prompt and the generated tokens (stop token
included), 0 on padding, so the full forward sees exactly what the decoder saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ling_jax.data.arithmetic import ArithmeticProblem
from ling_jax.model.decode import left_pad
from ling_jax.rl.advantages import group_advantages
from ling_jax.rl.rewards import RolloutGroup, score_groups
from ling_jax.rl.segmentation import batch_sentence_ids
from ling_jax.train.multihost import host_value


@dataclasses.dataclass
class Rollouts:
    """N = P * G sampled responses (row p * G + g is sample g of prompt p), host arrays."""

    prompt_ids: np.ndarray  # [N, P] int32, left-padded
    prompt_lengths: np.ndarray  # [N] int32
    response: np.ndarray  # [N, R] int32, pad after the stop token
    sampler_logp: np.ndarray  # [N, R] fp32 policy log-probs recorded while sampling
    lengths: np.ndarray  # [N] int32 response tokens (stop token included)
    finished: np.ndarray  # [N] bool
    texts: list[str]  # decoded responses (special tokens dropped)


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int,
                   pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids [B, max_prompt_tokens] and lengths [B]."""
    encoded = [tokenizer.encode(p) for p in prompts]
    longest = max(len(e) for e in encoded)
    if longest > max_prompt_tokens:
        raise ValueError(f"a prompt has {longest} tokens > rl.max_prompt_tokens="
                         f"{max_prompt_tokens}; raise rl.max_prompt_tokens (and seq_len)")
    return left_pad(encoded, max_prompt_tokens, pad_id)


def sample_groups(generate_fn, params, biases, prompt_ids: np.ndarray, prompt_lengths: np.ndarray,
                  group_size: int, key: jax.Array, max_steps: int, tokenizer) -> Rollouts:
    """G samples of every prompt with `generate_fn` (ling_jax.model.decode.make_generate_fn with
    group_size=G: each prompt is prefilled once, its G samples decode together in one batch)."""
    ids = np.repeat(prompt_ids, group_size, axis=0)
    lengths = np.repeat(prompt_lengths, group_size, axis=0)
    out = generate_fn(params, biases, jnp.asarray(prompt_ids), jnp.asarray(prompt_lengths), key,
                      jnp.int32(max_steps))
    if out.tokens.shape[0] != len(ids):
        raise ValueError(f"generate_fn returned {out.tokens.shape[0]} rows for {len(prompt_ids)} "
                         f"prompts x {group_size} samples; build it with group_size={group_size}")
    return rollouts_from(ids, lengths, out, tokenizer)


def rollouts_from(ids: np.ndarray, lengths: np.ndarray, out, tokenizer) -> Rollouts:
    """Rollouts of the rows `ids` [N, P] / `lengths` [N] from a decode.Generation over all N rows
    (a multi-process one is gathered: every process calls this for the same step)."""
    response, logp, counts, finished = (host_value(x) for x in
                                        (out.tokens, out.logprobs, out.lengths, out.finished))
    texts = [tokenizer.decode(row[:n].tolist()) for row, n in zip(response, counts, strict=True)]
    return Rollouts(ids, lengths, np.asarray(response), np.asarray(logp, np.float32),
                    np.asarray(counts), np.asarray(finished), texts)


def take_rows(rollouts: Rollouts, rows: np.ndarray) -> Rollouts:
    """The rollouts of `rows` (in that order)."""
    arrays = {f.name: getattr(rollouts, f.name)[rows] for f in dataclasses.fields(Rollouts)
              if f.name != "texts"}
    return Rollouts(**arrays, texts=[rollouts.texts[int(r)] for r in rows])


def response_mask(lengths: np.ndarray, slots: int) -> np.ndarray:
    """[N, R] bool: slot j holds a generated token (j < length)."""
    return np.arange(slots)[None, :] < np.asarray(lengths)[:, None]


def sequence_layout(prompt_ids: np.ndarray, prompt_lengths: np.ndarray, response: np.ndarray,
                    lengths: np.ndarray) -> dict[str, np.ndarray]:
    """tokens / positions / segment_ids [N, P + R] of the full forward (module doc)."""
    n, p = prompt_ids.shape
    s = p + response.shape[1]
    pad = (p - np.asarray(prompt_lengths))[:, None]
    index = np.arange(s)[None, :]
    real = (index >= pad) & (index < p + np.asarray(lengths)[:, None])
    return {"tokens": np.concatenate([prompt_ids, response], axis=1).astype(np.int32),
            "positions": np.maximum(index - pad, 0).astype(np.int32),
            "segment_ids": real.astype(np.int32)}


def response_logprobs(model, tokens, positions, segment_ids, response, prompt_len: int,
                      temperature: float, *, mtp: bool = True):
    """(log π(token) [N, R], entropy [N, R], expert counts) of the responses in one forward.

    π = softmax(logits / T): the distribution the sampler drew from before top-k / top-p.
    mtp=False skips the MTP layers (their logits are never read; the counts then cover the MoE
    stack only), for scoring that does not update the expert biases.
    """
    out = model(tokens, positions, segment_ids, mtp=mtp)
    # Logits predicting the response: natural positions prompt_len-1 ... (under context
    # parallelism the model's outputs come in out.order, so those positions are looked up there).
    wanted = prompt_len - 1 + jnp.arange(response.shape[1])
    if out.order is not None:
        wanted = jnp.argsort(out.order)[wanted]
    logits = jnp.take(out.logits, wanted, axis=1)
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_all, response[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy, out.expert_counts


def score_rollouts(rollouts: Rollouts, problems: Sequence[ArithmeticProblem], group_size: int,
                   weights: Mapping[str, float], params: Mapping[str, Any],
                   length_alpha: float, task=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rewards [P, G] and unweighted components [P, G] (length alpha from the stage).

    task: the ling_jax.rl.tasks.RLTask making each prompt's RolloutGroup (arithmetic if None).
    """
    params = {k: dict(v) for k, v in (params or {}).items()}
    if "length" in weights:
        params["length"] = {**params.get("length", {}), "alpha": length_alpha}
    groups = []
    for p, problem in enumerate(problems):
        rows = slice(p * group_size, (p + 1) * group_size)
        texts, lengths = rollouts.texts[rows], rollouts.lengths[rows].tolist()
        if task is not None:
            groups.append(task.group(problem, texts, lengths))
        else:
            groups.append(RolloutGroup(completions=texts, reference=problem.answer,
                                       lengths=lengths, difficulty=problem.difficulty))
    return score_groups(groups, weights, params)


def sentence_ids(rollouts: Rollouts, tokenizer, pause_chars: str, per_sentence: bool) -> np.ndarray:
    """[N, R] sentence ids for LPO (-1 off the response); one sentence per response otherwise."""
    mask = response_mask(rollouts.lengths, rollouts.response.shape[1])
    if not per_sentence:
        return np.where(mask, 0, -1).astype(np.int32)
    return batch_sentence_ids(rollouts.response, mask, lambda ids: tokenizer.decode(ids),
                              pause_chars=pause_chars)


def training_batch(rollouts: Rollouts, rewards_PG: np.ndarray, sentence_ids_NR: np.ndarray,
                   advantage_eps: float) -> dict[str, np.ndarray]:
    """The arrays the update consumes (logp_old is added by the phase after a forward)."""
    advantages = np.asarray(group_advantages(jnp.asarray(rewards_PG), eps=advantage_eps))
    batch = sequence_layout(rollouts.prompt_ids, rollouts.prompt_lengths, rollouts.response,
                            rollouts.lengths)
    batch.update(response=rollouts.response.astype(np.int32),
                 mask=response_mask(rollouts.lengths, rollouts.response.shape[1]),
                 advantages=advantages.reshape(-1).astype(np.float32),
                 sentence_ids=sentence_ids_NR.astype(np.int32))
    return batch
