"""colab_tiny with post-training: pretrain → midtrain → Evo-CoT RL (LPO) on built-in arithmetic.

Sized for a 2-core CPU (well under 15 minutes end to end): a short pretrain on Python sources and
arithmetic, a mid-training on arithmetic word problems with worked solutions, then RL on the same
task with verifiable rewards, two Evo-CoT stages (harder problems, longer responses, smaller
length-reward alpha) and held-out greedy exact-match accuracy every few steps.

    ling-jax train --config experiments/colab_tiny_rl.py --workdir runs/tiny_rl
    python experiments/colab_tiny_rl.py --workdir runs/tiny_rl   # same run, then before/after
                                                                 # accuracy with 95% CIs + PNG
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from ling_jax.config import get_preset
from ling_jax.train.experiment import checkpointing, experiment

ARITHMETIC = dict(kind="builtin_arithmetic", split="train", difficulty=(1, 2))


def rl_phase(objective: str = "lpo", steps: int = 36) -> dict:
    """The RL phase (shared with benchmarks/rl_objectives.py).

    Tuned on this CPU: lr above ~3e-4 collapses (fresh AdamW steps are sign-like: one update moved
    single tokens by up to 8 nats at 5e-4); the length reward pools over *correct* responses and
    the std floor (advantage_eps) is 0.1, because with the group-wide pool an all-wrong group's
    length differences alone become unit advantages and drove responses to 3 tokens.
    """
    return dict(
        kind="rl", steps=steps, seq_len=96, batch_size=16,
        data=dict(sources=dict(arithmetic=dict(kind="builtin_arithmetic", split="train",
                                               num_docs=100_000, seed=1))),
        lr=dict(kind="wsm", peak_lr=1.5e-4, warmup_steps=4), bias_update_rate=1e-4,
        rl=dict(objective=objective, group_size=8, minibatches=2, epochs=1, temperature=1.0,
                max_prompt_tokens=48, advantage_eps=0.1, eval_every=9, eval_problems=256,
                reward_params={"math_answer": {"extractors": ("hashes",)},
                               "length": {"pool": "correct"}},
                stages=[dict(steps=2 * steps // 3, difficulty=(1, 2), max_response_tokens=40,
                             length_alpha=0.1),
                        dict(steps=0, difficulty=2, max_response_tokens=48,
                             length_alpha=0.05)]))


def get_config():
    import ling_jax.rl.phase  # noqa: F401  (registers the "rl" phase kind before validation)

    model = get_preset("tiny")
    pretrain = dict(
        kind="pretrain", steps=40, seq_len=128, batch_size=16,
        data=dict(sources=dict(python=dict(kind="builtin_python", split="train", weight=0.5),
                               arithmetic=dict(ARITHMETIC, mask_prompt=False, weight=0.5))),
        lr=dict(kind="wsm", peak_lr=3e-3, warmup_steps=10), bias_update_rate=1e-3)
    midtrain = dict(
        kind="midtrain", steps=220, seq_len=128, batch_size=16,
        data=dict(sources=dict(arithmetic=ARITHMETIC)),
        lr=dict(kind="wsm", peak_lr=2e-3, warmup_steps=10), bias_update_rate=1e-4)
    return experiment(
        model, tokenizer=dict(kind="builtin", vocab_size=2048, cache_dir=""),
        phases=[("pretrain", pretrain), ("midtrain", midtrain), ("rl", rl_phase())],
        checkpoint=checkpointing(every_steps=100, keep=2),
        sample_prompt="Question: Ada has 7 apples. Then Ada finds 5 more. How many apples does "
                      "Ada have now?\nAnswer:\n")


def report(records: list[dict], phase: str = "rl") -> str:
    """Held-out accuracy before and after the RL phase with 95% CIs (from metrics.jsonl)."""
    from ling_jax.rl.evaluation import describe, paired_difference

    rows = [r for r in records if r["phase"] == phase]
    before = next(r["heldout_correct"] for r in rows if r.get("heldout_rl_steps") == 0)
    after = rows[-1]["heldout_correct_end"]
    diff, lo, hi = paired_difference(before, after)
    return (f"held-out exact match before RL: {describe(before)}\n"
            f"held-out exact match after  RL: {describe(after)}\n"
            f"paired difference: {diff:+.3f} (95% CI {lo:+.3f} to {hi:+.3f})")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/tiny_rl")
    args = parser.parse_args(argv)
    from ling_jax.rl.plots import plot_rl
    from ling_jax.train.loop import run_experiment
    from ling_jax.train.metrics_log import read_metrics

    start = time.time()
    result = run_experiment(get_config(), args.workdir)
    records = read_metrics(args.workdir)
    png = plot_rl(records, "rl", pathlib.Path(args.workdir) / "rl_curves.png")
    print(f"finished in {time.time() - start:.0f} s (step {result.global_step}); curves: {png}")
    print(report(records))


if __name__ == "__main__":
    main(sys.argv[1:])
