"""Does the Evo-CoT length reward move the accuracy-vs-tokens curve? Code RL with and without it.

Runs experiments/code_rl.py's pretrain → code mid-training once, then its rl phase from that same
checkpoint once per length alpha (0 = no length reward), with the same prompts, sampling seeds and
step count. Prints, per arm: held-out greedy pass@1 before and after (95% Wilson CIs), the paired
difference (95% CI), mean held-out response tokens before and after with the paired difference
(95% CI), the sampled tokens per step, the fraction of groups whose
samples all got one reward (no advantage signal, so no length signal either), the mean policy
entropy and the arm's wall time;
draws both arms' held-out accuracy-vs-tokens curves into one PNG. Prints figures, never pass/fail.

    python benchmarks/rl_token_efficiency.py --workdir /tmp/rl_tokens [--steps 20]
        [--alphas 0,0.2] [--midtrain_steps 300] [--verbose_fraction 0.5]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))

import code_rl  # noqa: E402

from ling_jax.rl.evaluation import (  # noqa: E402
    accuracy_token_curve,
    describe,
    paired_difference,
    phase_heldout,
    phase_response_tokens,
)
from ling_jax.rl.plots import plot_token_curve  # noqa: E402
from ling_jax.train.loop import run_experiment  # noqa: E402
from ling_jax.train.metrics_log import read_metrics  # noqa: E402


def _config(args, alpha: float):
    return code_rl.get_config(args.midtrain_steps, args.steps, alpha, args.verbose_fraction)


def base_run(workdir: pathlib.Path, args) -> pathlib.Path:
    """A workdir whose newest checkpoint is the end of code mid-training."""
    base = workdir / f"base_m{args.midtrain_steps}_v{args.verbose_fraction:g}"
    cfg = _config(args, 0.0)
    pre_rl = sum(cfg.phases[n].steps for n in cfg.phase_order if n != code_rl.RL_PHASE)
    if not (base / "checkpoints" / str(pre_rl)).is_dir():
        run_experiment(cfg, base, max_steps=pre_rl)
    return base


def run_arm(base: pathlib.Path, workdir: pathlib.Path, args, alpha: float) -> dict:
    out = workdir / f"alpha_{alpha:g}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    start = time.time()
    run_experiment(_config(args, alpha), out)
    rows = [r for r in read_metrics(out) if r.get("phase") == code_rl.RL_PHASE]
    before, after = phase_heldout(rows)
    return {"alpha": alpha, "rows": rows, "before": before, "after": after,
            "tokens": phase_response_tokens(rows), "seconds": time.time() - start,
            "flat": float(np.mean([r["flat_groups"] for r in rows])),
            "entropy": float(np.mean([r["entropy"] for r in rows]))}


def line(r: dict) -> str:
    d, lo, hi = paired_difference(r["before"], r["after"])
    t0, t1 = (np.mean(t) for t in r["tokens"])
    td, tlo, thi = paired_difference(*r["tokens"])
    return (f"length alpha {r['alpha']:<4g} pass@1 {describe(r['before'])} -> "
            f"{describe(r['after'])}; Δ {d:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}); "
            f"mean response tokens {t0:.2f} -> {t1:.2f}, Δ {td:+.2f} (95% CI {tlo:+.2f} to "
            f"{thi:+.2f}); groups with one reward {r['flat']:.2f}, entropy "
            f"{r['entropy']:.3f}; {r['seconds']:.0f} s")


def curve(r: dict) -> str:
    """Per step: sampled response tokens (rollouts) and, where evaluated, held-out greedy
    tokens / accuracy."""
    sampled = " ".join(f"{row['response_length']:.1f}" for row in r["rows"])
    held = ", ".join(f"step {k}: {t:.2f} tok, {a:.3f}" for k, t, a in accuracy_token_curve(r["rows"]))
    return (f"length alpha {r['alpha']:<4g} sampled tokens per step: {sampled}\n"
            f"{'':17}held-out: {held}")


def plot(results: list[dict], out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        plot_token_curve(ax, r["rows"], label=f"length alpha {r['alpha']:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/rl_token_efficiency")
    parser.add_argument("--steps", type=int, default=20, help="RL steps per arm")
    parser.add_argument("--midtrain_steps", type=int, default=300)
    parser.add_argument("--alphas", default="0,0.2", help="length alphas, 0 = no length reward")
    parser.add_argument("--verbose_fraction", type=float, default=0.0,
                        help="share of mid-training bodies written through a named intermediate "
                             "(a longer correct body: room for the length reward)")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    base = base_run(workdir, args)
    results = []
    for alpha in (float(a) for a in args.alphas.split(",")):
        results.append(run_arm(base, workdir, args, alpha))
        print(line(results[-1]), flush=True)
    print(f"\ncode RL ({args.steps} steps, same checkpoint/prompts/seeds), held-out "
          f"n={len(results[0]['before'])}, greedy:")
    for r in results:
        print(line(r))
    for r in results:
        print(curve(r))
    print(f"curves: {plot(results, workdir / 'accuracy_vs_tokens.png')}")


if __name__ == "__main__":
    main(sys.argv[1:])
