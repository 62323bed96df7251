"""RL curves as one PNG: reward, rollout and held-out accuracy, length, clip fraction, KL, entropy."""

from __future__ import annotations

import pathlib

import numpy as np

_PANELS = (
    ("reward", ("reward",)),
    ("accuracy", ("accuracy", "heldout_accuracy")),
    ("response length (tokens)", ("response_length",)),
    ("clip fraction", ("clip_fraction",)),
    ("KL (k3)", ("kl_old", "kl")),
    ("entropy", ("entropy",)),
)


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    if key == "heldout_accuracy":  # measured on the incoming policy, plus the final one
        points = [(r["heldout_rl_steps"], r["heldout_accuracy"]) for r in rows
                  if "heldout_accuracy" in r]
        points += [(r["phase_step"], r["heldout_accuracy_end"]) for r in rows
                   if "heldout_accuracy_end" in r]
        return [p[0] for p in points], [p[1] for p in points]
    points = [(r["phase_step"], r[key]) for r in rows if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def summary_line(rows: list[dict]) -> str:
    """The phase's held-out before/after line ('' until the phase has finished)."""
    from ling_jax.rl.evaluation import describe_change, phase_heldout

    pair = phase_heldout(rows)
    return describe_change(*pair) if pair else ""


def plot_rl(records: list[dict], phase: str, out_path: str | pathlib.Path) -> pathlib.Path:
    """Curves of one rl phase over its steps (x: RL steps done) from metrics.jsonl records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r.get("phase") == phase]
    # Evo-CoT stage boundaries: the last step of each stage (x counts RL steps done).
    stage_ends = [a["phase_step"] for a, b in zip(rows, rows[1:], strict=False)
                  if "stage" in a and a.get("stage") != b.get("stage")]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (title, keys) in zip(axes.ravel(), _PANELS, strict=True):
        for x in stage_ends:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        for key in keys:
            x, y = _series(rows, key)
            if x:
                style = "o-" if key == "heldout_accuracy" else "-"
                ax.plot(x, np.asarray(y, np.float64), style, label=key)
        ax.set(title=title, xlabel="RL step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    line = summary_line(rows)
    fig.suptitle(f"RL phase {phase!r}" + (f"\n{line}" if line else ""))
    fig.tight_layout()
    out_path = pathlib.Path(out_path)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
