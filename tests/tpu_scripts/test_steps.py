"""tpu_scripts/steps.py: what is printed is what runs, in order, stdin included."""

import subprocess

import pytest
from steps import Step, run_steps


def test_printed_lines_run_in_a_shell_like_the_steps(tmp_path, capfd):
    out = tmp_path / "out.txt"
    src = tmp_path / "in.txt"
    src.write_text("from a file\n")
    steps = [Step(["sh", "-c", f"cat > {out}"], stdin="line one\nit's two\n"),
             Step(["sh", "-c", f"cat >> {out}"], stdin_file=str(src)),
             Step([], text="only printed\n")]
    run_steps(steps, dry_run=False)
    ran = out.read_text()
    printed = capfd.readouterr().out
    assert ran == "line one\nit's two\nfrom a file\n" and printed.endswith("only printed\n")
    out.unlink()
    subprocess.run(["bash", "-c", printed.rsplit("only printed", 1)[0]], check=True, timeout=30)
    assert out.read_text() == ran  # the printed lines do the same


def test_dry_run_runs_nothing_and_a_failure_raises(tmp_path, capfd):
    marker = tmp_path / "ran"
    run_steps([Step(["touch", str(marker)])], dry_run=True)
    assert not marker.exists() and capfd.readouterr().out == f"touch {marker}\n"
    with pytest.raises(subprocess.CalledProcessError):
        run_steps([Step(["false"]), Step(["touch", str(marker)])], dry_run=False)
    assert not marker.exists()
