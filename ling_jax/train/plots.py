"""End-of-phase PNG: loss curves and per-expert load (matplotlib, headless)."""

from __future__ import annotations

import pathlib

import numpy as np


def plot_phase(records: list[dict], phase: str, out_path: str | pathlib.Path) -> pathlib.Path:
    """Loss, LM and MTP loss over steps for every phase so far; expert load of `phase`'s last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_load) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r["phase"] for r in records):
        rows = [r for r in records if r["phase"] == name]
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], label=f"{name} loss")
        if any(r.get("mtp_loss") for r in rows):
            ax_loss.plot(steps, [r["mtp_loss"] for r in rows], "--", label=f"{name} MTP loss")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    last = [r for r in records if r["phase"] == phase and r.get("expert_counts")]
    if last:
        counts = np.asarray(last[-1]["expert_counts"], np.float64)
        image = ax_load.imshow(counts / np.maximum(counts.mean(-1, keepdims=True), 1), aspect="auto",
                               cmap="viridis")
        fig.colorbar(image, ax=ax_load, label="load / mean load")
        ax_load.set(xlabel="expert", ylabel="MoE layer (MTP last)",
                    title=f"expert load, last step of {phase}")
    fig.tight_layout()
    out_path = pathlib.Path(out_path)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
