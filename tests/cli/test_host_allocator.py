"""The console script's one-time restart with glibc's huge-page malloc tunable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ling_jax.cli import host_allocator as ha

_ENV = {"PATH": "/bin", "HOME": "/root"}


def test_adds_tunable_once_and_keeps_the_rest():
    env = ha.tuned_environment(_ENV, thp_usable=True, libc="glibc")
    assert env == {**_ENV, "GLIBC_TUNABLES": ha.TUNABLE}
    assert ha.tuned_environment(env, thp_usable=True, libc="glibc") is None  # no restart loop


def test_appends_to_user_tunables_and_respects_theirs():
    env = ha.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp_usable=True,
                               libc="glibc")
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{ha.TUNABLE}"
    mine = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert ha.tuned_environment(mine, thp_usable=True, libc="glibc") is None


@pytest.mark.parametrize("env,thp,libc", [
    ({ha.OPT_OUT: "0"}, True, "glibc"),  # opted out
    ({}, False, "glibc"),  # kernel has transparent huge pages off
    ({}, True, ""),  # musl or unknown libc: the tunable means nothing
])
def test_no_restart_when_it_cannot_help(env, thp, libc):
    assert ha.tuned_environment(env, thp_usable=thp, libc=libc) is None


@pytest.mark.parametrize("mode,usable", [
    ("always [madvise] never\n", True), ("[always] madvise never\n", True),
    ("always madvise [never]\n", False)])
def test_reads_the_kernel_thp_mode(tmp_path, mode, usable):
    path = tmp_path / "enabled"
    path.write_text(mode)
    assert ha._thp_usable(str(path)) is usable
    assert ha._thp_usable(str(tmp_path / "missing")) is False


def test_restart_keeps_arguments_and_sets_the_tunable():
    code = ("import os, sys; from ling_jax.cli import host_allocator as h; "
            "h.restart_with_tuned_allocator(); print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", ha.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", code, "a b", "--x=1"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    applies = sys.platform == "linux" and ha._thp_usable() and ha.platform.libc_ver()[0] == "glibc"
    assert out == f"{ha.TUNABLE if applies else None} ['a b', '--x=1']"
