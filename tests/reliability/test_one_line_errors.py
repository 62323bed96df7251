"""User errors end in one line: config-field typos (nearest valid name), list override syntax,
a missing config file, read-only and wrong-kind user paths; nothing is written."""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from ml_collections.config_flags import config_path

from ling_jax.cli.errors import user_errors_exit
from tests.reliability.hostile import REPO, assert_one_line, cli

CONFIG = REPO / "experiments" / "colab_tiny.py"


def test_config_typos_and_missing_file_are_one_line(tmp_path):
    workdir = tmp_path / "run"
    cases = {
        "--config.phases.pretrain.stepz=5": ["phases.pretrain", "'stepz'", "did you mean 'steps'"],
        "--config.phases.rl.rl.stages.0.steps=1": ["stages[0].steps"],
        "--config.phasez.pretrain.steps=5": ["'phasez'", "did you mean 'phases'"],
    }
    commands = [("train", "--config", CONFIG, arg, "--workdir", workdir) for arg in cases]
    commands.append(("train", "--config", tmp_path / "nonexistent.py", "--workdir", workdir))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: cli(*c, timeout=120), commands))
    for result, needles in zip(results, [*cases.values(), [str(tmp_path / "nonexistent.py")]],
                               strict=True):
        assert_one_line(result, *needles)
    assert not workdir.exists()


def test_suggested_list_syntax_is_what_overrides_accept():
    from ling_jax.cli.config_errors import _check_path, _load

    cfg = _load(str(CONFIG))
    assert _check_path("config.x", cfg, "phases.rl.rl.stages[0].steps") is None
    # ml_collections' own override resolution agrees with the suggestion.
    want = cfg.phases.rl.rl.stages[0]["steps"]
    assert config_path.get_value("phases.rl.rl.stages[0].steps", cfg) == want


def _exit_line(fn, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        user_errors_exit(fn)()
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ling-jax: error: "), lines
    return lines[0]


def test_user_path_os_errors_name_the_path(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _exit_line(lambda: (blocker / "run").mkdir(parents=True), capsys)  # real ENOTDIR
    assert str(blocker / "run") in line
    line = _exit_line(lambda: open(tmp_path, "w"), capsys)  # real EISDIR
    assert str(tmp_path) in line and "directory" in line

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt"))

    assert str(tmp_path / "ckpt") in _exit_line(full, capsys)

    def wrapped():  # tensorstore reports a full disk as text inside its own error (as seen)
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "x/0" in OCDBT database at local '
                         f'file "{tmp_path}/": Failed writing: "{tmp_path}/d/abc": Failed to '
                         f"write 6963200 bytes to file 8: No space left on device")

    line = _exit_line(wrapped, capsys)
    assert f"{tmp_path}/d/abc: No space left on device" in line and "OCDBT" not in line


def test_a_bug_is_still_a_traceback():
    with pytest.raises(KeyError):
        user_errors_exit(lambda: {}["x"])()


def test_read_only_output_directory_is_one_line(tmp_path, bailing_tiny_dir):
    """A read-only directory: chmod for a normal user; as root (which chmod does not stop) a
    read-only bind mount in a user + mount namespace (util-linux unshare)."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    prefix: tuple = ()
    if os.geteuid() == 0:
        prefix = ("unshare", "-rm", "sh", "-c",
                  'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"', readonly)
    else:
        readonly.chmod(0o555)
    result = cli("import-hf", "--hf", bailing_tiny_dir, "--out", readonly / "ckpt", prefix=prefix,
                 timeout=120)
    readonly.chmod(0o755)
    assert_one_line(result, str(readonly))
    assert any(s in result.stderr for s in ("Read-only file system", "Permission denied"))
    assert list(readonly.iterdir()) == []
