"""tpu_scripts/tpu.py builds the right gcloud commands (checked through --dry-run)."""

import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tpu_scripts" / "tpu.py"
BASE = ["--name", "ling", "--zone", "us-east5-a", "--dry-run"]


def _dry(*args: str) -> tuple[int, str, str]:
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                         timeout=60)
    return out.returncode, out.stdout, out.stderr


def test_queued_multislice_create_and_train_on_every_host():
    rc, out, _ = _dry("create", *BASE, "--accelerator", "v5p-1024", "--queued", "--num-slices",
                      "2", "--spot")
    assert rc == 0
    assert out.startswith("gcloud compute tpus queued-resources create ling --zone=us-east5-a")
    for part in ("--accelerator-type=v5p-1024", "--runtime-version=v2-alpha-tpuv5",
                 "--node-count=2", "--spot"):
        assert part in out
    rc, out, _ = _dry("train", *BASE, "--queued", "--config", "experiments/x.py", "--workdir",
                      "gs://b/run", "--", "--config.phases.pretrain.steps=10")
    assert rc == 0 and "--worker=all --node=all" in out
    # `ling-jax train` itself on every host: jax.distributed finds the coordinator on Cloud TPU.
    assert "nohup python3 -m ling_jax.cli.main train --config=experiments/x.py " \
           "--workdir=gs://b/run --config.phases.pretrain.steps=10 >" in out


def test_stop_signals_the_trainer_but_not_its_own_shell():
    rc, out, _ = _dry("stop", *BASE[:-1], "--dry_run")  # the underscore spelling works too
    assert rc == 0 and "pkill -TERM -f" in out
    pattern = shlex.split(shlex.split(out)[-1].split("=", 1)[1])[3]
    assert re.search(pattern, "python3 -m ling_jax.cli.main train --config=e.py")
    assert not re.search(pattern, f"bash -c pkill -TERM -f '{pattern}' || true")


def test_tpu_vm_install_copies_the_source_and_installs_everywhere():
    rc, out, _ = _dry("install", *BASE)
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 3
    assert lines[0].startswith("git archive") and "tpu-vm scp" in lines[1]
    assert "tpu-vm ssh ling" in lines[2] and "--worker=all" in lines[2] and "pip install -e" in lines[2]


@pytest.mark.parametrize("args, message", [
    (("train", "--config", "e.py", "--workdir", "/tmp/run"), "use a gs:// path"),
    (("create", "--accelerator", "v5p1024"), "expected TYPE-CORES"),
    (("create", "--accelerator", "tpu7x-128"), "use the GKE path: python tpu_scripts/gke.py"),
    (("create", "--accelerator", "v5p-64", "--num-slices", "2"), "needs --queued"),
])
def test_bad_requests_are_one_clear_line(args, message):
    rc, out, err = _dry(args[0], *BASE, *args[1:])
    assert rc == 2 and message in err and not out
