"""Shared pieces of the RL tests: a character tokenizer, a small random model, a tiny experiment."""

from __future__ import annotations

from flax import nnx

from ling_jax.config import get_preset
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.train.experiment import with_phase_defaults
from tests.train.experiment_fixtures import small_experiment


class CharTokenizer:
    """One token per character (ids 3..255); 0 = eos, 2 = pad. Decoding drops special ids."""

    vocab_size, eos_id, pad_id, bos_id = 256, 0, 2, 1

    def encode(self, text: str) -> list[int]:
        return [min(max(ord(c), 3), 255) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(int(i)) for i in ids if int(i) >= 3)


def small_model_config():
    cfg = get_preset("tiny")
    cfg.update(dict(hidden_size=64, num_hidden_layers=3, first_k_dense_replace=1,
                    intermediate_size=96, num_experts=8, num_experts_per_tok=2, n_group=2,
                    topk_group=1, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
                    initializer_range=0.08))
    return cfg


def small_model(seed: int = 3) -> LingForCausalLM:
    return LingForCausalLM(small_model_config(), rngs=nnx.Rngs(seed))


def rl_phase_fields(steps: int = 4, objective: str = "lpo", kl_beta: float = 0.0) -> dict:
    return dict(
        kind="rl", steps=steps, seq_len=72, batch_size=4,
        data=dict(sources=dict(math=dict(kind="builtin_arithmetic", split="train",
                                         num_docs=1000))),
        lr=dict(kind="wsm", peak_lr=1e-3, warmup_steps=0), bias_update_rate=1e-4,
        rl=dict(objective=objective, group_size=4, minibatches=2, epochs=1,
                max_prompt_tokens=48, eval_every=2, eval_problems=8, kl_beta=kl_beta,
                stages=[dict(steps=2, difficulty=1, max_response_tokens=16, length_alpha=0.2),
                        dict(steps=0, difficulty=(1, 2), max_response_tokens=24,
                             length_alpha=0.1)]))


def rl_experiment(pretrain_steps: int = 2, **rl_kwargs):
    """small_experiment's pretrain, then an rl phase (midtrain dropped to save compiles)."""
    cfg = small_experiment(pretrain_steps=pretrain_steps, every=100)
    cfg.phases.rl = with_phase_defaults(rl_phase_fields(**rl_kwargs))
    cfg.phase_order = ("pretrain", "rl")
    return cfg
