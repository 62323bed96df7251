"""The RL curves PNG and its before/after title line, from metrics records."""

import shutil
import tempfile
from pathlib import Path

from ling_jax.rl.evaluation import accuracy_token_curve, describe_change
from ling_jax.rl.plots import plot_rl, summary_line


def _records(tokens: bool = False):
    rows = []
    for step in range(1, 7):
        row = {"phase": "rl", "phase_step": step, "reward": 0.1 * step, "accuracy": 0.05 * step,
               "response_length": 18.0, "clip_fraction": 0.01, "kl_old": 1e-3, "entropy": 0.2}
        if step in (1, 4):
            row.update(heldout_rl_steps=step - 1, heldout_accuracy=0.5,
                       heldout_correct=[1, 0, 1, 0])
            if tokens:
                row.update(heldout_tokens=30.0 - step)
        rows.append(row)
    rows[-1].update(heldout_accuracy_end=0.75, heldout_correct_end=[1, 1, 1, 0])
    if tokens:
        rows[-1].update(heldout_tokens_end=21.5)
    return [{"phase": "pretrain", "step": 1, "loss": 3.0}, *rows]


def test_summary_line_pairs_the_phase_start_with_the_end():
    assert summary_line(_records()) == describe_change([1, 0, 1, 0], [1, 1, 1, 0])
    assert summary_line(_records()[:-1]) == ""  # phase not finished: no line


def test_plot_rl_writes_a_png(tmp_path):
    out = plot_rl(_records(), "rl", tmp_path / "rl.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_summary_and_curve_report_tokens():
    rows = _records(tokens=True)
    line = summary_line(rows, metric="pass@1")
    assert line.startswith("held-out pass@1 0.500") and "mean response tokens 29.0 -> 21.5" in line
    assert accuracy_token_curve(rows[1:]) == [(0, 29.0, 0.5), (3, 26.0, 0.5), (6, 21.5, 0.75)]
    out = plot_rl(rows, "rl", Path(tmp := tempfile.mkdtemp()) / "rl.png", metric="pass@1")
    assert out.stat().st_size > 10_000
    shutil.rmtree(tmp)
