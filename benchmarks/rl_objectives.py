"""LPO vs GRPO vs GSPO on the same budget and seeds: the RL phase of experiments/colab_tiny.py.

Runs pretrain → midtrain once (or reuses a finished default run's end-of-midtrain checkpoint), then
the rl phase from that same checkpoint with each objective (its default clip ε), the same prompts,
sampling seeds and step count, and prints a table: held-out greedy exact match before and after
(95% Wilson CIs, paired difference CI), mean rollout reward/accuracy over the first and last
quarter of the steps, clip fraction, KL to π_old (k3; mean and median over steps: a few steps
with very large values dominate the mean), entropy and wall time.
Prints figures, never pass/fail.

With one optimizer update per rollout batch (the default experiment: epochs = minibatches = 1)
every ratio is exactly 1, so LPO and GRPO take the same gradient and only GSPO's per-sequence
weighting differs; `--epochs 2` (the default here) makes the second pass off-policy, where the
objectives' ratios and clips differ.

    python benchmarks/rl_objectives.py --workdir /tmp/rl_bench [--steps 40] [--epochs 2]
        [--objectives lpo,grpo] [--base runs/colab_tiny]   # reuse a default run's checkpoint
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))

import colab_tiny  # noqa: E402

from ling_jax.cli import host_allocator  # noqa: E402
from ling_jax.rl.evaluation import paired_difference, phase_heldout, wilson_interval  # noqa: E402
from ling_jax.train.experiment import with_phase_defaults  # noqa: E402
from ling_jax.train.loop import run_experiment  # noqa: E402
from ling_jax.train.metrics_log import read_metrics  # noqa: E402


def _config(objective: str, steps: int, epochs: int = 1):
    cfg = colab_tiny.get_config()
    phase = colab_tiny.rl_phase(objective, steps)
    phase["rl"]["epochs"] = epochs
    cfg.phases.rl = with_phase_defaults(phase)
    return cfg


def _pre_rl_step(cfg) -> int:
    return sum(cfg.phases[n].steps for n in cfg.phase_order if n != "rl")


def base_run(workdir: pathlib.Path, steps: int, reuse: str | None) -> pathlib.Path:
    """A workdir whose newest checkpoint is the end of midtraining: `reuse` (a finished
    colab_tiny run, later checkpoints dropped from a copy) or a fresh pretrain + midtrain."""
    base, cfg = workdir / "base", _config("lpo", steps)
    pre_rl = _pre_rl_step(cfg)
    if reuse and not (base / "checkpoints" / str(pre_rl)).is_dir():
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(reuse, base)
    if (base / "checkpoints" / str(pre_rl)).is_dir():
        for step_dir in (base / "checkpoints").iterdir():
            if step_dir.name.isdigit() and int(step_dir.name) > pre_rl:
                shutil.rmtree(step_dir)
    else:
        run_experiment(cfg, base, max_steps=pre_rl)
    return base


def run_objective(base: pathlib.Path, workdir: pathlib.Path, objective: str, steps: int,
                  epochs: int) -> dict:
    """The rl phase with `objective` from a copy of the base run; summary figures."""
    out = workdir / objective
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    start = time.time()
    run_experiment(_config(objective, steps, epochs), out)
    seconds = time.time() - start
    rows = [r for r in read_metrics(out) if r["phase"] == "rl"]
    before, after = phase_heldout(rows)
    quarter = max(len(rows) // 4, 1)
    mean = lambda key, part: float(np.mean([r[key] for r in part]))
    return {"objective": objective, "before": before, "after": after, "seconds": seconds,
            "reward_first": mean("reward", rows[:quarter]),
            "reward_last": mean("reward", rows[-quarter:]),
            "acc_first": mean("accuracy", rows[:quarter]),
            "acc_last": mean("accuracy", rows[-quarter:]),
            "clip": mean("clip_fraction", rows), "kl": mean("kl_old", rows),
            "kl_median": float(np.median([r["kl_old"] for r in rows])),
            "entropy": mean("entropy", rows)}


def _fmt(correct) -> str:
    k, n = int(np.sum(correct)), len(correct)
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.3f} [{lo:.2f},{hi:.2f}]"


def table(results: list[dict]) -> str:
    head = (f"{'objective':9} {'held-out before':>18} {'held-out after':>18} {'Δ paired [95% CI]':>24}"
            f" {'reward 1st→last ¼':>18} {'rollout acc':>13} {'clip':>6} {'KL mean':>8} {'median':>7}"
            f" {'H':>6}"
            f" {'time s':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        d, lo, hi = paired_difference(r["before"], r["after"])
        delta = f"{d:+.3f} [{lo:+.2f},{hi:+.2f}]"
        reward = f"{r['reward_first']:.3f}→{r['reward_last']:.3f}"
        acc = f"{r['acc_first']:.2f}→{r['acc_last']:.2f}"
        lines.append(f"{r['objective']:9} {_fmt(r['before']):>18} {_fmt(r['after']):>18} "
                     f"{delta:>24} {reward:>18} {acc:>13} {r['clip']:6.3f} {r['kl']:8.3g} "
                     f"{r['kl_median']:7.4f} {r['entropy']:6.3f} {r['seconds']:7.0f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/rl_objectives")
    parser.add_argument("--steps", type=int, default=40, help="RL steps per objective")
    parser.add_argument("--epochs", type=int, default=2, help="passes over each rollout batch")
    parser.add_argument("--objectives", default="lpo,grpo,gspo")
    parser.add_argument("--base", default=None,
                        help="a colab_tiny workdir to start from (its end-of-midtrain checkpoint)")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    base = base_run(workdir, args.steps, args.base)
    results = []
    for objective in args.objectives.split(","):
        results.append(run_objective(base, workdir, objective, args.steps, args.epochs))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(f"\nRL phase of colab_tiny, {args.steps} steps x {args.epochs} epochs, same "
          "checkpoint/prompts/seeds; "
          f"held-out n={len(results[0]['before'])} greedy exact match\n")
    print(table(results))


if __name__ == "__main__":
    host_allocator.restart_with_tuned_allocator()  # see its docstring: ~12% on bench-mini
    main(sys.argv[1:])
