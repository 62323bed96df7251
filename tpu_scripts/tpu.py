#!/usr/bin/env python3
"""Create a Cloud TPU slice, install ling-jax on every host, launch `ling-jax train` on all of them.

    python tpu_scripts/tpu.py create  --name ling --zone us-east5-a --accelerator v5p-1024 --queued
    python tpu_scripts/tpu.py install --name ling --zone us-east5-a --queued
    python tpu_scripts/tpu.py train   --name ling --zone us-east5-a --queued \\
        --config experiments/ling_1t_pretrain.py --workdir gs://BUCKET/runs/ling-1t
    python tpu_scripts/tpu.py logs | stop | delete  --name ling --zone us-east5-a --queued
Add --dry-run to print the gcloud commands instead of running them. `--queued` uses a queued
resource (the recommended way; required for --num-slices > 1); without it a TPU VM is created
directly. Every host runs `ling-jax train` (as `python3 -m ling_jax.cli.main train`), which calls
jax.distributed.initialize() with no coordinator flags: the coordinator and the process ids come
from the TPU metadata. Each process reads its own slice of the data and orbax writes checkpoints
to the gs:// workdir. TPU7x and GKE clusters: tpu_scripts/gke.py.
Only the standard library is used here, so the script runs on any machine with gcloud.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

from steps import Step, run_steps

# Cloud TPU API runtime images (cloud.google.com/tpu/docs/runtimes).
RUNTIMES = {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5e": "v2-alpha-tpuv5-lite", "v4": "tpu-ubuntu2204-base"}
REMOTE_DIR = "~/ling-jax"
TARBALL = "/tmp/ling-jax-src.tar.gz"
LOG = "~/ling-jax-train.log"
TRAIN = "python3 -m ling_jax.cli.main train"  # PATH-independent `ling-jax train`


def runtime_for(accelerator: str) -> str:
    """Runtime image for an accelerator type such as v5p-1024 (one clear error otherwise)."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", accelerator)
    if not match:
        raise ValueError(f"--accelerator {accelerator!r}: expected TYPE-CORES, e.g. v5p-1024")
    generation = match.group(1)
    if generation.startswith("tpu7"):
        raise ValueError("--accelerator: TPU7x is not served by the Cloud TPU VM API that this "
                         "script drives; use the GKE path: python tpu_scripts/gke.py create|apply "
                         "--config EXPERIMENT:tpu7x ... (tpu_scripts/README.md)")
    if generation not in RUNTIMES:
        raise ValueError(f"--accelerator {accelerator!r}: unknown generation {generation!r}; "
                         f"known: {sorted(RUNTIMES)}")
    return RUNTIMES[generation]


def _where(a) -> list[str]:
    return [f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])


def _ssh(a, command: str, worker: str = "all") -> list[str]:
    if a.queued:
        return ["gcloud", "compute", "tpus", "queued-resources", "ssh", a.name, *_where(a),
                f"--worker={worker}", "--node=all", f"--command={command}"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.name, *_where(a), f"--worker={worker}",
            f"--command={command}"]


def _scp(a, local: str, remote: str) -> list[str]:
    kind = ["queued-resources"] if a.queued else ["tpu-vm"]
    extra = ["--node=all"] if a.queued else []
    return ["gcloud", "compute", "tpus", *kind, "scp", local, f"{a.name}:{remote}", *_where(a),
            "--worker=all", *extra]


def create_commands(a) -> list[list[str]]:
    runtime = a.runtime or runtime_for(a.accelerator)
    spot = ["--spot"] if a.spot else []
    if a.queued:
        nodes = ([f"--node-count={a.num_slices}", f"--node-prefix={a.name}"]
                 if a.num_slices > 1 else [f"--node-id={a.name}"])
        return [["gcloud", "compute", "tpus", "queued-resources", "create", a.name, *_where(a),
                 f"--accelerator-type={a.accelerator}", f"--runtime-version={runtime}", *nodes,
                 *spot]]
    if a.num_slices > 1:
        raise ValueError("--num-slices > 1 needs --queued (multislice uses queued resources)")
    return [["gcloud", "compute", "tpus", "tpu-vm", "create", a.name, *_where(a),
             f"--accelerator-type={a.accelerator}", f"--version={runtime}", *spot]]


def install_commands(a) -> list[list[str]]:
    unpack = (f"mkdir -p {REMOTE_DIR} && tar xzf ~/ling-jax-src.tar.gz -C {REMOTE_DIR} && "
              f"python3 -m pip install -U pip && python3 -m pip install -e '{REMOTE_DIR}[tpu,gcs]'")
    return [["git", "archive", "--format=tar.gz", f"--output={TARBALL}", "HEAD"],
            _scp(a, TARBALL, "~/ling-jax-src.tar.gz"), _ssh(a, unpack)]


def train_commands(a) -> list[list[str]]:
    if not a.config or not a.workdir:
        raise ValueError("train needs --config EXPERIMENT and --workdir (gs://BUCKET/PATH: every "
                         "host must see the same checkpoints)")
    if not a.workdir.startswith("gs://"):
        raise ValueError(f"--workdir {a.workdir!r}: use a gs:// path shared by all hosts")
    flags = " ".join(shlex.quote(f) for f in [f"--config={a.config}", f"--workdir={a.workdir}",
                                              *a.extra])
    run = (f"cd {REMOTE_DIR} && export JAX_PLATFORMS=tpu && nohup {TRAIN} {flags} > {LOG} 2>&1 &")
    return [_ssh(a, run)]


def logs_commands(a) -> list[list[str]]:
    return [_ssh(a, f"tail -n 50 {LOG}", worker="0")]


def stop_commands(a) -> list[list[str]]:
    # SIGTERM: the train loop saves a checkpoint at the next step boundary and exits.
    # '[p]ython3 ...' matches the trainer but not the shell that runs this pkill.
    return [_ssh(a, f"pkill -TERM -f '[{TRAIN[0]}]{TRAIN[1:]}' || true")]


def delete_commands(a) -> list[list[str]]:
    if a.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", a.name, *_where(a),
                 "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", a.name, *_where(a), "--quiet"]]


ACTIONS = {"create": create_commands, "install": install_commands, "train": train_commands,
           "logs": logs_commands, "stop": stop_commands, "delete": delete_commands}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=sorted(ACTIONS))
    p.add_argument("--name", required=True, help="TPU VM or queued-resource name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--accelerator", default="v5p-8", help="accelerator type, e.g. v5p-1024")
    p.add_argument("--runtime", default="", help="runtime image (default: by generation)")
    p.add_argument("--queued", action="store_true", help="use a queued resource")
    p.add_argument("--num-slices", type=int, default=1, help="slices over DCN (queued only)")
    p.add_argument("--spot", action="store_true")
    p.add_argument("--config", default="", help="experiment file for `train`")
    p.add_argument("--workdir", default="", help="gs:// run directory for `train`")
    p.add_argument("--dry-run", "--dry_run", action="store_true",
                   help="print the commands, run nothing")
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:len(argv) - len(extra) - (1 if "--" in argv else 0)])
    args.extra = extra  # after --: more `ling-jax train` flags
    return args


def main(argv: list[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    try:
        commands = ACTIONS[a.action](a)
    except ValueError as e:
        print(f"tpu.py: error: {e}", file=sys.stderr)
        return 2
    try:
        run_steps([Step(cmd) for cmd in commands], dry_run=a.dry_run)
    except subprocess.CalledProcessError as e:
        print(f"tpu.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
