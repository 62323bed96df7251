"""A full disk during training ends in one line naming the file and the cause (before: ~1,200
lines, 150 tracebacks of orbax's writer threads and tensorstore's closed-loop callbacks)."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import pytest

from ling_jax.cli.errors import path_error_line, user_errors_exit
from ling_jax.train.metrics_log import MetricsLog
from tests.reliability.full_disk import progress_free, tiny_tmpfs_prefix
from tests.reliability.hostile import ENV, REPO, cli

_SAVE = textwrap.dedent("""
    import sys
    import numpy as np, jax.numpy as jnp
    from ling_jax.cli import quiet_failures
    from ling_jax.cli.errors import user_errors_exit
    from ling_jax.train.checkpoint import CheckpointStore

    quiet_failures.install()  # what `ling-jax` installs before every subcommand

    @user_errors_exit
    def main():
        with CheckpointStore(sys.argv[1], keep=2) as store:  # async, as the train loop saves
            rng = np.random.default_rng(0)  # incompressible: 6 MiB cannot fit 256 KiB
            state = {f"w{i}": jnp.asarray(rng.standard_normal((256, 1024)), jnp.float32)
                     for i in range(6)}
            store.save(1, state, {"step": 1})
            store.wait()

    main()
""")


def test_metrics_write_on_a_full_disk_names_the_file(tmp_path, capsys):
    log = MetricsLog(tmp_path, tensorboard=False)
    log._file.close()
    log._file = open("/dev/full", "a")  # the kernel's always-full device: a real ENOSPC
    with pytest.raises(OSError) as info:
        log.write({"step": 1, "phase": "pretrain", "loss": 1.0})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(log.path)
    line = path_error_line(info.value)
    assert line.startswith(f"{log.path}: No space left on device"), line
    with pytest.raises(SystemExit):
        user_errors_exit(log.close)()  # the loop's `finally` flushes again: still one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(log.path) in err[0], err


def test_checkpoint_save_on_a_full_disk_is_one_line(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    script = tmp_path / "save.py"
    script.write_text(_SAVE)
    result = subprocess.run([*tiny_tmpfs_prefix(mount, "256k"), sys.executable, str(script),
                             str(mount / "checkpoints")], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1, f"{len(lines)} lines:\n{result.stderr[-3000:]}"
    assert lines[0].startswith(f"ling-jax: error: {mount}/checkpoints/1.orbax-checkpoint-tmp/")
    assert lines[0].endswith("No space left on device; free space there or choose another location")


@pytest.mark.slow
def test_train_on_a_full_disk_is_one_line(tmp_path):
    """`ling-jax train` whose workdir fills at the first checkpoint."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = cli("train", "--config", "experiments/colab_tiny.py", "--workdir", mount / "run",
                 "--config.checkpoint.every_steps=1", "--max_steps=2", "--sample_tokens=0",
                 prefix=tiny_tmpfs_prefix(mount, "256k"), timeout=900)
    lines = progress_free(result.stderr)
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1, f"{len(lines)} lines:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"ling-jax: error: {mount}/run/"), lines[0]
    assert "No space left on device" in lines[0]


def test_asyncio_never_retrieved_records_of_orbax_writes_are_dropped(caplog):
    """The echo the CI run met once (43 lines): asyncio logs an orbax write future's exception
    as 'never retrieved' when its loop is collected; other asyncio errors still pass."""
    import logging
    import types

    from ling_jax.cli import quiet_failures

    quiet_failures.install()

    def raised_in(filename: str) -> BaseException:
        code = compile("def write():\n    raise ValueError('RESOURCE_EXHAUSTED')\n", filename,
                       "exec")
        scope: dict = {}
        types.FunctionType(code.co_consts[0], scope)()  # a frame whose file is `filename`

    errors = {}
    for name, filename in (("orbax", "/site-packages/orbax/checkpoint/x.py"),
                           ("other", "/site-packages/mylib/x.py")):
        try:
            raised_in(filename)
        except ValueError as e:
            errors[name] = e
    # tensorstore sets a write's exception on orbax's future without raising it: no traceback
    errors["tensorstore"] = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "opt_state.mu" in OCDBT database at local file '
        '"/ckpt/1.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": '
        'No space left on device')
    errors["other untraced"] = ValueError('RESOURCE_EXHAUSTED: Error writing "/data/x"')
    log = logging.getLogger("asyncio")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for name, error in errors.items():
            log.error("_GatheringFuture exception was never retrieved (%s)", name,
                      exc_info=(type(error), error, error.__traceback__))
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["_GatheringFuture exception was never retrieved (other)",
                        "_GatheringFuture exception was never retrieved (other untraced)"]
