"""The embedded default (experiments/colab_tiny.py: pretrain → midtrain → Evo-CoT RL with LPO) as a
script that ends with the RL report: held-out greedy exact match before and after the rl phase with
95% CIs and the paired difference, and the reward/accuracy curves (PNG).

    python experiments/colab_tiny_rl.py --workdir runs/tiny_rl
    ling-jax train --config experiments/colab_tiny_rl.py --workdir runs/tiny_rl   # same run
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import colab_tiny  # noqa: E402

rl_phase = colab_tiny.rl_phase


def get_config():
    return colab_tiny.get_config()


def report(records: list[dict], phase: str = "rl") -> str:
    """Held-out accuracy before and after the RL phase with 95% CIs (from metrics.jsonl)."""
    from ling_jax.rl.plots import summary_line

    line = summary_line([r for r in records if r.get("phase") == phase])
    if not line:
        raise ValueError(f"the metrics hold no finished rl phase {phase!r}")
    return line


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/tiny_rl")
    args = parser.parse_args(argv)
    from ling_jax.train.loop import run_experiment
    from ling_jax.train.metrics_log import read_metrics

    start = time.time()
    result = run_experiment(get_config(), args.workdir)
    print(f"finished in {time.time() - start:.0f} s (step {result.global_step}); plots: "
          + ", ".join(str(p) for p in result.plots))
    print(report(read_metrics(args.workdir)))


if __name__ == "__main__":
    main(sys.argv[1:])
