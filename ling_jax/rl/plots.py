"""RL curves as one PNG: reward, rollout and held-out accuracy, length, clip fraction, KL, entropy,
and the held-out accuracy-vs-mean-response-tokens curve over training (one point per evaluation,
joined in step order: up-and-left is better)."""

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


def summary_line(rows: list[dict], metric: str = "exact match") -> str:
    """The phase's held-out before/after line with accuracy and mean response tokens ('' until
    the phase has finished)."""
    from ling_jax.rl.evaluation import describe_change, phase_heldout, phase_tokens

    pair = phase_heldout(rows)
    return describe_change(*pair, metric=metric, tokens=phase_tokens(rows)) if pair else ""


def plot_token_curve(ax, rows: list[dict], label: str | None = None) -> None:
    """Held-out accuracy against mean response tokens, one point per evaluation, step-labelled."""
    from ling_jax.rl.evaluation import accuracy_token_curve

    points = accuracy_token_curve(rows)
    if not points:
        return
    steps, tokens, accuracy = zip(*points, strict=True)
    ax.plot(tokens, accuracy, "o-", label=label)
    for s, x, y in ((steps[0], tokens[0], accuracy[0]), (steps[-1], tokens[-1], accuracy[-1])):
        ax.annotate(f"step {s}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set(title="held-out accuracy vs tokens", xlabel="mean response tokens",
           ylabel="held-out accuracy")


def plot_rl(records: list[dict], phase: str, out_path: str | pathlib.Path,
            metric: str = "exact match") -> pathlib.Path:
    """Curves of one rl phase over its steps (x: RL steps done) from metrics.jsonl records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r.get("phase") == phase]
    # Evo-CoT stage boundaries: the last step of each stage (x counts RL steps done).
    stage_ends = [a["phase_step"] for a, b in zip(rows, rows[1:], strict=False)
                  if "stage" in a and a.get("stage") != b.get("stage")]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7))
    plot_token_curve(axes[0, 3], rows)
    axes[1, 3].axis("off")
    panels = [ax for i, ax in enumerate(axes.ravel()) if i % 4 != 3]
    for ax, (title, keys) in zip(panels, _PANELS, strict=True):
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
    line = summary_line(rows, metric)
    fig.suptitle(f"RL phase {phase!r}" + (f"\n{line}" if line else ""))
    fig.tight_layout()
    out_path = pathlib.Path(out_path)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
