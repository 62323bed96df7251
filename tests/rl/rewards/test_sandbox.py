"""The sandbox contains hostile programs within its limits and the caller carries on."""

import os
import time

import pytest

from ling_jax.rl.rewards.sandbox import (
    SandboxJob,
    SandboxLimits,
    network_isolation,
    run_jobs,
    run_program,
)

ARGS, EXPECTED = [(1,), (2,)], [2, 3]
GOOD = "def f(x):\n    return x + 1\n"
FAST = SandboxLimits(cpu_seconds=1, wall_seconds=20.0)


def _run(program, limits=FAST, **kw):
    return run_program(program, "f", ARGS, EXPECTED, limits, **kw)


def test_correct_and_wrong_programs():
    assert _run(GOOD).passed == (True, True) and _run(GOOD).status == "ok"
    assert _run("def f(x):\n    return x\n").passed == (False, False)
    # The child returns JSON; True is not 2 and "2" is not 2.
    assert _run("def f(x):\n    return str(x + 1)\n").passed == (False, False)
    assert _run("def f(x):\n    return 1 / (x - 1) + x\n").passed == (False, False)
    partial = _run("def f(x):\n    return 2\n")
    assert partial.passed == (True, False) and partial.fraction == 0.5


def test_infinite_loop_is_killed_by_the_cpu_limit():
    r = _run("def f(x):\n    while True:\n        pass\n")
    assert r.status == "killed" and r.detail in ("SIGXCPU", "SIGKILL") and not any(r.passed)


def test_sleeping_program_is_killed_on_the_wall_clock_with_its_group(tmp_path):
    start = time.perf_counter()
    r = _run("import time\ndef f(x):\n    time.sleep(60)\n",
             SandboxLimits(cpu_seconds=5, wall_seconds=1.0))
    assert r.status == "timeout" and time.perf_counter() - start < 15


def _no_namespace() -> None:
    msg = "unshare is not permitted on this machine (the audit-hook case still runs)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.mark.parametrize("isolation", ["namespace", "audit-hook"])
def test_processes_and_shell_are_refused(isolation, tmp_path):
    if isolation == "namespace" and network_isolation() != "namespace":
        _no_namespace()
    marker = tmp_path / "pwned"
    for program in (
        "import os\ndef f(x):\n    while True:\n        os.fork()\n",  # fork bomb
        f"import os\nos.system('touch {marker}')\ndef f(x):\n    return x + 1\n",
        f"import subprocess\nsubprocess.run(['touch', '{marker}'])\ndef f(x):\n    return x + 1\n",
    ):
        r = _run(program, isolation=isolation)
        assert not any(r.passed), program
    assert not marker.exists()


@pytest.mark.parametrize("isolation", ["namespace", "audit-hook"])
def test_no_network(isolation):
    if isolation == "namespace" and network_isolation() != "namespace":
        _no_namespace()
    program = ("import socket\ndef f(x):\n    socket.create_connection(('127.0.0.1', 22), 1)\n"
               "    return x + 1\n")
    assert not any(_run(program, isolation=isolation).passed)


def test_memory_bomb_and_huge_outputs_are_capped(tmp_path):
    bomb = _run("def f(x):\n    return len([0] * 10**9) + x\n")
    assert not any(bomb.passed) and bomb.status == "ok"  # MemoryError inside the child
    printed = _run("def f(x):\n    print('x' * 10**7)\n    return x + 1\n")
    assert printed.passed == (True, True) and printed.output_bytes < 4096  # print() is discarded
    raw = _run("import os\ndef f(x):\n    os.write(1, b'x' * 10**8)\n    return x + 1\n")
    assert not any(raw.passed) and raw.output_bytes <= FAST.file_bytes


def test_file_writes_stay_in_the_temp_dir(tmp_path):
    outside = tmp_path / "outside.txt"
    r = _run(f"def f(x):\n    open({str(outside)!r}, 'w').write('x')\n    return x + 1\n")
    assert not any(r.passed) and not outside.exists()
    home = os.path.expanduser("~/ling_jax_sandbox_probe")
    r = _run(f"def f(x):\n    open({home!r}, 'w').write('x')\n    return x + 1\n")
    assert not any(r.passed) and not os.path.exists(home)
    local = _run("def f(x):\n    open('ok.txt', 'w').write('x')\n    return x + 1\n")
    assert local.passed == (True, True)  # its own temp dir is writable
    big = _run("def f(x):\n    open('big.txt', 'w').write('x' * 10**7)\n    return x + 1\n")
    assert not any(big.passed)  # RLIMIT_FSIZE


def test_pool_runs_jobs_in_order_and_survives_hostile_neighbours():
    hostile = SandboxJob("def f(x):\n    while True:\n        pass\n", "f", tuple(ARGS),
                         tuple(EXPECTED))
    good = SandboxJob(GOOD, "f", tuple(ARGS), tuple(EXPECTED))
    exiting = SandboxJob("import os\nos._exit(0)\n", "f", tuple(ARGS), tuple(EXPECTED))
    lists = SandboxJob("def f(v):\n    return v[:2]\n", "f", (([1, 2, 3],), ([],)), ([1, 2], []))
    results = run_jobs([good, hostile, exiting, good, lists], FAST, workers=2)
    assert [r.all_passed for r in results] == [True, False, False, True, True]
    assert results[2].status == "crashed"


def test_limits_are_checked():
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxLimits(memory_bytes=2**20)
    with pytest.raises(ValueError, match="isolation"):
        _run(GOOD, isolation="chroot")
