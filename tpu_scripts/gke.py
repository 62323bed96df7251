#!/usr/bin/env python3
"""Train on TPU7x or (multi-slice) v5p through GKE: a JobSet from the experiment's mesh and topology.

    python tpu_scripts/gke.py image    --image IMAGE
    python tpu_scripts/gke.py create   --cluster C --zone Z --config experiments/ling_1t_pretrain.py:tpu7x
    python tpu_scripts/gke.py apply    --cluster C --zone Z --name ling-1t --image IMAGE \\
        --config experiments/ling_1t_pretrain.py:tpu7x --workdir gs://BUCKET/runs/ling-1t
    python tpu_scripts/gke.py manifest | xpk ...   (same flags as apply)
    python tpu_scripts/gke.py logs | delete --cluster C --zone Z --name ling-1t
The topology and slice count come from the experiment's `aot` block unless --topology /
--num_slices say otherwise; the mesh must fill the slices exactly (one line says what does not
fit). Flags after `--` go to `ling-jax train` (`--config.*` overrides are applied here too, so the
check sees the mesh the run will use). --dry_run prints the commands (and the manifest), runs
nothing. `create` and `xpk` drive xpk; `apply`, `logs` and `delete` drive kubectl.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

import gke_jobset
from gke_jobset import Launch
from gke_topology import Slices, check_mesh, parse_slices
from steps import Step, run_steps

REPO = pathlib.Path(__file__).resolve().parents[1]
ACTIONS = ("image", "create", "manifest", "apply", "xpk", "logs", "delete")


def _where(a) -> list[str]:
    return [f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])


def _credentials(a) -> list[Step]:
    if not a.cluster:
        return []  # kubectl's current context
    if not a.zone:
        raise ValueError("--cluster needs --zone (the cluster's location)")
    return [Step(["gcloud", "container", "clusters", "get-credentials", a.cluster,
                  f"--location={a.zone}", *([f"--project={a.project}"] if a.project else [])])]


def _config_overrides(extra: list[str]) -> list[str]:
    """The `--config.FIELD=VALUE` flags among the `ling-jax train` flags."""
    out, it = [], iter(extra)
    for arg in it:
        if arg.startswith("--config."):
            out.append(arg if "=" in arg else f"{arg}={next(it, '')}")
    return out


def load_experiment(config: str, extra: list[str]):
    """The experiment ConfigDict exactly as `ling-jax train` will build it (overrides applied)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["gke.py", f"--config={config}", *_config_overrides(extra)]
    values = flags.FlagValues()  # sys_argv: the overrides to define (default: sys.argv)
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=False,
                                    sys_argv=argv)
    try:
        values(argv)
    except (AttributeError, KeyError) as e:
        raise ValueError(f"--config {config!r}: an override names an unknown field {e}") from None
    except (flags.Error, SyntaxError, ImportError, TypeError) as e:  # a bad file or value
        last = [line for line in str(e).splitlines() if line.strip()][-1]  # the cause, not the trace
        raise ValueError(f"--config {config!r}: {last}") from None
    return values.config


def _repo_relative(config: str) -> str:
    """The config path inside the image (which holds the repository at its working dir)."""
    path, _, variant = config.partition(":")
    full = pathlib.Path(path).resolve()
    if not full.is_file() or full.suffix != ".py":
        raise ValueError(f"--config {config!r}: no such experiment file (.py with get_config())")
    try:
        rel = full.relative_to(REPO).as_posix()
    except ValueError:
        raise ValueError(f"--config {config!r}: must be a file inside the repository "
                         f"({REPO}); the image holds only the repository") from None
    return rel + (f":{variant}" if variant else "")


def slices_for(a) -> tuple[Slices, object | None]:
    """The slices (flags, else the experiment's aot block) and the loaded experiment, if any."""
    cfg = None
    if a.config:
        _repo_relative(a.config)  # exists, inside the repository
        cfg = load_experiment(a.config, a.extra)
    aot = (cfg.get("aot", None) or {}) if cfg is not None else {}
    topology = a.topology or aot.get("topology", None)
    if not topology:
        raise ValueError("no topology: pass --topology (e.g. tpu7x:4x8x8) or --config with an "
                         "aot.topology")
    slices = parse_slices(topology, a.num_slices or int(aot.get("num_slices", 1) or 1))
    return slices, cfg


def launch_for(a) -> Launch:
    for flag in ("name", "image", "config", "workdir"):
        if not getattr(a, flag):
            raise ValueError(f"{a.action} needs --{flag}")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", a.name):
        raise ValueError(f"--name {a.name!r}: use 1-40 lowercase letters, digits and '-', "
                         "starting with a letter (it names pods and their DNS hostnames)")
    if not a.workdir.startswith("gs://"):
        raise ValueError(f"--workdir {a.workdir!r}: use a gs:// path shared by all hosts")
    if a.max_restarts < 0 or a.grace_seconds < 0:
        raise ValueError("--max_restarts and --grace_seconds must be >= 0")
    slices, cfg = slices_for(a)
    mesh = check_mesh(cfg, slices)
    print(f"# {slices.name} × {slices.num_slices} slice(s): {slices.hosts} host(s) per slice, "
          f"{slices.chips_per_host} chips per host, {slices.devices} devices; mesh {mesh}",
          file=sys.stderr)
    return Launch(a.name, a.image, _repo_relative(a.config), a.workdir, slices, tuple(a.extra),
                  a.max_restarts, a.grace_seconds, a.spot)


def steps(a) -> list[Step]:
    """The commands of an action (the manifest itself for `manifest`)."""
    if a.action == "image":
        if not a.image:
            raise ValueError("image needs --image (e.g. us-docker.pkg.dev/PROJECT/REPO/ling-jax)")
        tar = "/tmp/ling-jax-image.tar"
        return [Step(["git", "-C", str(REPO), "archive", "--format=tar", f"--output={tar}",
                      "HEAD"]),
                Step(["docker", "build", "-f", "tpu_scripts/Dockerfile", "-t", a.image, "-"],
                     stdin_file=tar),
                Step(["docker", "push", a.image])]
    if a.action == "create":
        slices, cfg = slices_for(a)
        if cfg is not None:
            check_mesh(cfg, slices)
        return [Step(gke_jobset.xpk_cluster_argv(slices, a.cluster, _where(a), a.spot))]
    if a.action in ("logs", "delete"):
        if not a.name:
            raise ValueError(f"{a.action} needs --name")
        if a.action == "delete":  # SIGTERM to every pod: one checkpoint, clean exit
            return [*_credentials(a), Step(["kubectl", "delete", "jobset", a.name, "--wait"])]
        pod0 = (f"jobset.sigs.k8s.io/jobset-name={a.name},jobset.sigs.k8s.io/job-index=0,"
                "batch.kubernetes.io/job-completion-index=0")
        return [*_credentials(a), Step(["kubectl", "logs", "-f", "-l", pod0, "--tail=50"])]
    creds = _credentials(a) if a.action == "apply" else []
    launch = launch_for(a)
    if a.action == "manifest":
        return [Step([], text=gke_jobset.manifest(launch))]
    if a.action == "xpk":
        return [Step(gke_jobset.xpk_workload_argv(launch, a.cluster, _where(a)))]
    return [*creds, Step(["kubectl", "apply", "-f", "-"], stdin=gke_jobset.manifest(launch))]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--name", default="", help="JobSet / xpk workload name")
    p.add_argument("--cluster", default="", help="GKE cluster (create, xpk; kubectl credentials)")
    p.add_argument("--zone", default="", help="cluster location, e.g. us-central1-c")
    p.add_argument("--project", default="")
    p.add_argument("--image", default="", help="container image with the repository installed")
    p.add_argument("--config", default="", help="experiment file[:variant] inside the repository")
    p.add_argument("--workdir", default="", help="gs:// run directory")
    p.add_argument("--topology", default="", help="e.g. tpu7x:4x8x8 (default: aot.topology)")
    p.add_argument("--num_slices", "--num-slices", type=int, default=0,
                   help="slices over DCN (default: aot.num_slices or 1)")
    p.add_argument("--max_restarts", "--max-restarts", type=int, default=10,
                   help="JobSet restarts after a failure or preemption (each resumes)")
    p.add_argument("--grace_seconds", "--grace-seconds", type=int, default=300,
                   help="SIGTERM-to-kill time for the checkpoint at deletion")
    p.add_argument("--spot", action="store_true", help="Spot node pools / pods on Spot nodes")
    p.add_argument("--dry_run", "--dry-run", action="store_true",
                   help="print the commands and the manifest, run nothing")
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:len(argv) - len(extra) - (1 if "--" in argv else 0)])
    args.extra = extra
    return args


def main(argv: list[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    try:
        if a.action in ("create", "xpk") and not (a.cluster and a.zone):
            raise ValueError(f"{a.action} needs --cluster and --zone")
        commands = steps(a)
    except ValueError as e:
        print(f"gke.py: error: {e}", file=sys.stderr)
        return 2
    try:
        run_steps(commands, dry_run=a.dry_run)
    except subprocess.CalledProcessError as e:
        print(f"gke.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
