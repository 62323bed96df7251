"""The embedded default: the tiny Ling 2.0 trained pretrain → midtrain → rl on built-in data, on CPU.

Pretraining reads the Python standard library's own sources (present on every machine) mixed with
generated arithmetic word problems; mid-training teaches the problems' step-by-step solutions
(prompt tokens loss-masked); the RL phase (Evo-CoT, LPO) then samples 8 solutions per problem,
rewards the exact final answer and raises held-out greedy exact-match accuracy, reported before and
after with a paired 95% CI (summary, metrics.jsonl, title of phase_rl_rl.png). About 8 minutes on an
idle 2-core CPU: `ling-jax train --config experiments/colab_tiny.py --workdir runs/colab_tiny`.
"""

from __future__ import annotations

from ling_jax.config import get_preset
from ling_jax.train.experiment import checkpointing, experiment

ARITHMETIC = dict(kind="builtin_arithmetic", split="train", difficulty=(1, 2))


def rl_phase(objective: str = "lpo", steps: int = 40) -> dict:
    """The RL phase (shared with benchmarks/rl_objectives.py).

    Tuned on validation problems (train split, unused seed) of this CPU, from the end of the
    mid-training below. What made RL raise accuracy instead of lowering it:
    - the AdamW state of mid-training is carried (reset_optimizer=False) with β2 = 0.999: RL
      gradients are small and noisy, and with fresh moments or β2 = 0.95 the second moment soon
      matches them, so every update moves every weight by ~lr whatever the signal (random
      advantages at lr 3e-3 wrecked the model in 15 steps); anchored to the mid-training
      gradient scale, updates follow the signal;
    - one optimizer update per RL step over all 32 × 8 responses: four updates over 4-prompt
      minibatches mostly shift single tokens' probabilities, which does not carry over to
      held-out problems;
    - a start where greedy accuracy is ~50% and half of the groups hold both right and wrong
      answers (after 260 LM steps it was ~25% and RL lowered it).
    """
    return dict(
        kind="rl", steps=steps, seq_len=80, batch_size=32,
        data=dict(sources=dict(arithmetic=dict(kind="builtin_arithmetic", split="train",
                                               num_docs=100_000, seed=1))),
        lr=dict(kind="wsm", peak_lr=1e-3, warmup_steps=4), bias_update_rate=1e-4,
        rl=dict(objective=objective, group_size=8, minibatches=1, epochs=1, temperature=1.0,
                max_prompt_tokens=48, advantage_eps=0.1, eval_every=20, eval_problems=1024,
                reset_optimizer=False, optimizer={"b2": 0.999},
                reward_params={"math_answer": {"extractors": ("hashes",)},
                               "length": {"pool": "correct"}},
                stages=[dict(steps=steps // 2, difficulty=1, max_response_tokens=24,
                             length_alpha=0.1),
                        dict(steps=0, difficulty=(1, 2), max_response_tokens=32,
                             length_alpha=0.05)]))


def get_config():
    model = get_preset("tiny")
    pretrain = dict(
        kind="pretrain", steps=40, seq_len=128, batch_size=16,
        data=dict(sources=dict(python=dict(kind="builtin_python", split="train", weight=0.5),
                               arithmetic=dict(ARITHMETIC, mask_prompt=False, weight=0.5))),
        lr=dict(kind="wsm", peak_lr=3e-3, warmup_steps=10), bias_update_rate=1e-3)
    midtrain = dict(
        kind="midtrain", steps=520, seq_len=128, batch_size=16,
        data=dict(sources=dict(arithmetic=ARITHMETIC)),
        lr=dict(kind="wsm", peak_lr=2e-3, warmup_steps=10), bias_update_rate=1e-4)
    return experiment(
        model, tokenizer=dict(kind="builtin", vocab_size=2048, cache_dir=""),
        phases=[("pretrain", pretrain), ("midtrain", midtrain), ("rl", rl_phase())],
        checkpoint=checkpointing(every_steps=100, keep=2),
        sample_prompt=("Question: Farah has 5 stamps. Then Farah finds 14 more. Then the pile grows to 2 "
                       "times its size. How many stamps does Farah have now?\nAnswer:\n"))  # held out
