"""`ling-jax train`, `params`, `train-tokenizer`, `merge-checkpoints`: errors are one clear line."""

import os
import subprocess
import sys

import pytest

ENV = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ling_jax.cli.main", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=300)


def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_train_rejects_bad_config_before_compiling(tmp_path):
    workdir = tmp_path / "run"
    proc = _cli("train", "--config", "experiments/colab_tiny.py", f"--workdir={workdir}",
                "--config.phases.pretrain.microbatches=3")
    _one_line_error(proc, "phases.pretrain.batch_size", "microbatches=3")
    assert not workdir.exists()


def test_params_prints_the_reference_counts():
    proc = _cli("params", "--model", "ling_flash_2")
    assert proc.returncode == 0, proc.stderr
    assert "102,889,697,280" in proc.stdout and "6,152,269,824" in proc.stdout


def test_train_tokenizer_and_its_errors(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    out = tmp_path / "tok.json"
    proc = _cli("train-tokenizer", f"--input={corpus}", "--vocab_size=300", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    from ling_jax.data.tokenizers import load_tokenizer

    tok = load_tokenizer(out)
    assert tok.decode(tok.encode("the lazy fox")) == "the lazy fox"
    _one_line_error(_cli("train-tokenizer", f"--input={tmp_path}/*.md", f"--out={tmp_path}/x.json"),
                    "matches no file")
    _one_line_error(_cli("train-tokenizer", f"--input={corpus}", f"--out={out}"), "exists")


@pytest.mark.parametrize("args,needle", [
    (["--workdir=/nonexistent/run", "--out=/tmp/never-written-merge"], "experiment.json"),
])
def test_merge_checkpoints_bad_workdir(args, needle):
    _one_line_error(_cli("merge-checkpoints", *args), needle)
    assert not os.path.exists("/tmp/never-written-merge")


def test_train_with_relative_workdir_saves_checkpoints(tmp_path):
    """The README's command form: relative --config and --workdir from the repository root (orbax
    refuses relative checkpoint paths, so the CLI must make them absolute)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workdir = os.path.relpath(tmp_path / "runs" / "colab_tiny", root)
    assert not os.path.isabs(workdir)
    proc = _cli("train", "--config", "experiments/colab_tiny.py", "--workdir", workdir,
                "--config.phases.pretrain.steps=2", "--config.phases.pretrain.lr.warmup_steps=1",
                "--config.checkpoint.every_steps=1", "--max_steps=2", "--sample_tokens=0", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "colab_tiny" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["1", "2"]
    assert not list(checkpoints.glob("*tmp*"))


def test_path_flags_are_absolute(tmp_path, monkeypatch):
    from ling_jax.cli.path_flags import _PathParser

    monkeypatch.chdir(tmp_path)
    parser = _PathParser()
    assert parser.parse("runs/x") == str(tmp_path / "runs" / "x")
    assert parser.parse("~/y") == os.path.join(os.path.expanduser("~"), "y")
    assert parser.parse("gs://bucket/run") == "gs://bucket/run"
    assert parser.parse("") is None
