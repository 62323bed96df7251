"""Code RL on the tiny Ling 2.0: pretrain → mid-train on the built-in code tasks → RL with the
hybrid syntax / function / aesthetics reward (tests run in the sandbox), ending with held-out
greedy pass@1 and mean response tokens before and after the rl phase (95% CIs).

The phase helpers are meant to be reused as stages of a longer post-training experiment, e.g.
experiments/colab_tiny_post.py:

    from code_rl import code_midtrain_phase, code_rl_phase
    phases = [..., ("midtrain_code", code_midtrain_phase()), ("rl_code", code_rl_phase())]

    python experiments/code_rl.py --workdir runs/code_rl
    ling-jax train --config experiments/code_rl.py --workdir runs/code_rl   # same run
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from ling_jax.config import get_preset
from ling_jax.train.experiment import checkpointing, experiment

CODE = dict(kind="builtin_code", split="train", difficulty=(1, 2))
RL_PHASE = "rl_code"


def code_midtrain_phase(steps: int = 300, verbose_fraction: float = 0.0) -> dict:
    """Supervised steps on the train split's reference bodies (prompt tokens loss-masked);
    `verbose_fraction` of them through a named intermediate (a longer correct body)."""
    return dict(kind="midtrain", steps=steps, seq_len=64, batch_size=16,
                data=dict(sources=dict(code=dict(CODE, verbose_fraction=verbose_fraction))),
                lr=dict(kind="wsm", peak_lr=2e-3, warmup_steps=10), bias_update_rate=1e-4)


def code_rl_phase(steps: int = 20, length_alpha: float = 0.1, objective: str = "lpo",
                  eval_problems: int = 256, workers: int = 2) -> dict:
    """Code RL: 16 prompts x 8 samples per step; rewards code_syntax 0.2, code_function 1.0
    (fraction of tests passed), code_aesthetics 0.1 and the Evo-CoT length reward with
    `length_alpha` (0 turns it off); held-out greedy pass@1 and response tokens every 10 steps.

    Optimizer choices follow experiments/colab_tiny.rl_phase (carried AdamW state, b2 0.999).
    """
    weights = {"code_syntax": 0.2, "code_function": 1.0, "code_aesthetics": 0.1}
    if length_alpha > 0:
        weights["length"] = 1.0
    return dict(
        kind="rl", steps=steps, seq_len=64, batch_size=16,
        data=dict(sources=dict(code=dict(CODE, num_docs=100_000, seed=1))),
        lr=dict(kind="wsm", peak_lr=1e-3, warmup_steps=2), bias_update_rate=1e-4,
        rl=dict(objective=objective, group_size=8, minibatches=1, epochs=1, temperature=1.0,
                max_prompt_tokens=32, advantage_eps=0.1, eval_every=10,
                eval_problems=eval_problems, reset_optimizer=False, optimizer={"b2": 0.999},
                reward_weights=weights,
                reward_params={"code_function": {"workers": workers, "cpu_seconds": 2,
                                                 "wall_seconds": 10.0},
                               "length": {"pool": "correct"}},
                stages=[dict(steps=0, difficulty=(1, 2), max_response_tokens=32,
                             length_alpha=length_alpha)]))


def get_config(midtrain_steps: int = 300, rl_steps: int = 20, length_alpha: float = 0.1,
               verbose_fraction: float = 0.0):
    model = get_preset("tiny")
    pretrain = dict(
        kind="pretrain", steps=40, seq_len=128, batch_size=16,
        data=dict(sources=dict(python=dict(kind="builtin_python", split="train", weight=0.5),
                               code=dict(CODE, mask_prompt=False, weight=0.5))),
        lr=dict(kind="wsm", peak_lr=3e-3, warmup_steps=10), bias_update_rate=1e-3)
    midtrain = code_midtrain_phase(midtrain_steps, verbose_fraction)
    return experiment(
        model, tokenizer=dict(kind="builtin", vocab_size=2048, cache_dir=""),
        phases=[("pretrain", pretrain), ("midtrain_code", midtrain),
                (RL_PHASE, code_rl_phase(rl_steps, length_alpha))],
        checkpoint=checkpointing(every_steps=100, keep=2),
        sample_prompt='def times_7_plus_3(x):\n    """Return x times 7 plus 3."""\n')


def report(records: list[dict], phase: str = RL_PHASE) -> str:
    """Held-out pass@1 and mean response tokens before and after the code RL phase."""
    from ling_jax.rl.plots import summary_line

    line = summary_line([r for r in records if r.get("phase") == phase], metric="pass@1")
    if not line:
        raise ValueError(f"the metrics hold no finished rl phase {phase!r}")
    return line


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/code_rl")
    args = parser.parse_args(argv)
    from ling_jax.train.loop import run_experiment
    from ling_jax.train.metrics_log import read_metrics

    start = time.time()
    result = run_experiment(get_config(), args.workdir)
    print(f"finished in {time.time() - start:.0f} s (step {result.global_step}); plots: "
          + ", ".join(str(p) for p in result.plots))
    print(report(read_metrics(args.workdir)))


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    main(sys.argv[1:])
