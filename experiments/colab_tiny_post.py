"""Post-training on CPU: the tiny Ling 2.0 trained pretrain → midtrain → sft → rl on built-in data.

Pretraining and mid-training are colab_tiny's (shortened mid-training); the sft phase teaches the
built-in tool-calling task (pick the right function among the offered schemas, fill its typed
arguments from the request; conversations in the `compact` chat template, assistant turns
trained) mixed with arithmetic solutions; RL (Evo-CoT, LPO) then trains the arithmetic answers;
a short mid-training on the built-in code tasks and RL with the hybrid code reward (syntax,
function in the sandbox, aesthetics; experiments/code_rl.py) follow. It ends with held-out
tool-call accuracy before/after SFT (Wilson 95% CIs, paired difference), held-out arithmetic
accuracy and code pass@1, each with mean response tokens, before/after their RL phase.

    python experiments/colab_tiny_post.py --workdir runs/tiny_post
    ling-jax train --config experiments/colab_tiny_post.py --workdir runs/tiny_post   # same run
    python experiments/colab_tiny_post.py --sft_only --workdir runs/tiny_sft   # the sft phase
                                                          # alone, from a random init

Another RL stage is one more entry in `post_phases()`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import code_rl  # noqa: E402
import colab_tiny  # noqa: E402

from ling_jax.config import get_preset  # noqa: E402
from ling_jax.train.experiment import checkpointing, experiment  # noqa: E402

NUM_TOOLS = 2  # schemas offered per request (the right one and a distractor)


def sft_phase(steps: int = 300) -> dict:
    """Tool-call conversations (80% of rows) and arithmetic solutions (20%, so RL still starts
    from a model that answers in the '#### N' format)."""
    return dict(
        kind="sft", steps=steps, seq_len=256, batch_size=8,
        data=dict(long_docs="error", sources=dict(
            tools=dict(kind="builtin_tool_calls", split="train", num_tools=NUM_TOOLS, weight=0.8),
            arithmetic=dict(colab_tiny.ARITHMETIC, weight=0.2))),
        lr=dict(kind="wsm", peak_lr=3e-3, warmup_steps=10), bias_update_rate=1e-4,
        sft=dict(eval_problems=200, eval_num_tools=NUM_TOOLS, max_new_tokens=64))


def rl_phase(steps: int = 20) -> dict:
    """colab_tiny's Evo-CoT RL phase, shorter, evaluated at its start and end only."""
    phase = colab_tiny.rl_phase(steps=steps)
    phase["rl"].update(eval_every=steps, eval_problems=256)
    return phase


def post_phases() -> list[tuple[str, dict]]:
    """The phases after pre-training; add an RL stage here as ("name", phase dict)."""
    # Code: 60 mid-training steps leave room for RL to help (measured in experiments/code_rl.py:
    # held-out pass@1 0.262 -> 0.348 over 20 RL steps; from 300 steps' 0.965 RL lowered it).
    return [("sft", sft_phase()), ("rl", rl_phase()),
            ("midtrain_code", code_rl.code_midtrain_phase(steps=60)),
            (code_rl.RL_PHASE, code_rl.code_rl_phase(steps=20, length_alpha=0.0))]


def get_config():
    base = colab_tiny.get_config()
    phases = [("pretrain", base.phases.pretrain.to_dict()),
              ("midtrain", dict(base.phases.midtrain.to_dict(), steps=300)),
              *post_phases()]
    return experiment(
        get_preset("tiny"),
        tokenizer=dict(kind="builtin", vocab_size=2048, cache_dir="", chat_template="compact"),
        phases=phases, checkpoint=checkpointing(every_steps=100, keep=2))


def sft_only_config():
    """The sft phase alone from a random init (a harder start than after mid-training)."""
    cfg = get_config()
    cfg.phase_order = ("sft",)
    return cfg


def report(records: list[dict]) -> str:
    """Tool-call accuracy before/after SFT and RL accuracy / response tokens before/after."""
    from ling_jax.sft.evaluation import describe_change

    lines = []
    sft = next((r for r in records if r.get("phase") == "sft" and "tool_call_delta" in r), None)
    if sft is None:
        raise ValueError("the metrics hold no finished sft phase")
    lines.append("sft: " + describe_change(sft))
    rl_rows = [r for r in records if r.get("phase") == "rl"]
    if rl_rows:
        lines.append("rl: " + colab_tiny_rl_report(rl_rows))
    if any(r.get("phase") == code_rl.RL_PHASE for r in records):
        lines.append(f"{code_rl.RL_PHASE}: " + code_rl.report(records))
    return "\n".join(lines)


def colab_tiny_rl_report(rows: list[dict]) -> str:
    from ling_jax.rl.plots import summary_line

    line = summary_line(rows) or "no finished rl phase"
    lengths = [r["response_length"] for r in rows if "response_length" in r]
    if lengths:
        line += (f"; mean response tokens (sampled) {lengths[0]:.1f} at the first RL step -> "
                 f"{lengths[-1]:.1f} at the last")
    return line


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/tiny_post")
    parser.add_argument("--sft_only", action="store_true", help=sft_only_config.__doc__)
    args = parser.parse_args(argv)
    from ling_jax.train.loop import run_experiment
    from ling_jax.train.metrics_log import read_metrics

    start = time.time()
    result = run_experiment(sft_only_config() if args.sft_only else get_config(), args.workdir)
    print(f"finished in {time.time() - start:.0f} s (step {result.global_step}); plots: "
          + ", ".join(str(p) for p in result.plots))
    print(report(read_metrics(args.workdir)))


if __name__ == "__main__":
    main(sys.argv[1:])
