"""The JobSet manifest (and the equivalent `xpk workload create`) that runs `ling-jax train` on GKE.

One replicated job per slice (`replicas` = slices), one pod per host VM of a slice
(`parallelism` = `completions` = hosts), each pod holding all its host's chips (`google.com/tpu`).
The exclusive-topology annotation puts each slice's job on its own node pool. GKE gives every pod
TPU_WORKER_ID / TPU_WORKER_HOSTNAMES; `jax.distributed.initialize()` (called by `ling-jax train`
with no coordinator flags) reads those and, across slices, the MEGASCALE_* variables set here:
the slice id, the slice count and the DCN coordinator (pod 0 of slice 0, by its JobSet hostname).
Preemption: a lost host fails its Job (backoffLimit 0), JobSet then recreates every slice up to
failurePolicy.maxRestarts times, and `ling-jax train` resumes from the last checkpoint in the
gs:// workdir. Deleting the JobSet sends SIGTERM: one checkpoint, then exit.
"""

from __future__ import annotations

import dataclasses
import shlex

from gke_topology import GENERATIONS, Slices

REPLICATED_JOB = "slice"
CONTAINER = "ling-jax"
IMAGE_WORKDIR = "/ling-jax"  # where tpu_scripts/Dockerfile puts the repository


@dataclasses.dataclass(frozen=True)
class Launch:
    name: str  # JobSet / xpk workload name
    image: str
    config: str  # experiment path relative to the repository root (+ ':variant')
    workdir: str  # gs://...
    slices: Slices
    extra: tuple[str, ...] = ()  # further `ling-jax train` flags
    max_restarts: int = 10
    grace_seconds: int = 300
    spot: bool = False


def train_argv(launch: Launch) -> list[str]:
    """The command every host runs (no coordinator flags: jax.distributed auto-detects GKE)."""
    return ["ling-jax", "train", f"--config={launch.config}", f"--workdir={launch.workdir}",
            *launch.extra]


def coordinator_host(launch: Launch) -> str:
    """Pod 0 of slice 0: JobSet hostname <jobset>-<job>-<job index>-<pod index>.<subdomain>."""
    return f"{launch.name}-{REPLICATED_JOB}-0-0.{launch.name}"


def _env(launch: Launch) -> list[dict]:
    if launch.slices.num_slices == 1:
        return []
    job_index = "metadata.annotations['jobset.sigs.k8s.io/job-index']"
    return [{"name": "MEGASCALE_COORDINATOR_ADDRESS", "value": coordinator_host(launch)},
            {"name": "MEGASCALE_NUM_SLICES", "value": str(launch.slices.num_slices)},
            {"name": "MEGASCALE_SLICE_ID", "valueFrom": {"fieldRef": {"fieldPath": job_index}}}]


def jobset(launch: Launch) -> dict:
    """The JobSet as plain data (yaml.safe_dump / json.dumps give the manifest)."""
    s = launch.slices
    selector = {"cloud.google.com/gke-tpu-accelerator": GENERATIONS[s.generation].gke_accelerator,
                "cloud.google.com/gke-tpu-topology": s.topology}
    if launch.spot:
        selector["cloud.google.com/gke-spot"] = "true"
    container = {"name": CONTAINER, "image": launch.image, "workingDir": IMAGE_WORKDIR,
                 "command": train_argv(launch),
                 "resources": {"limits": {"google.com/tpu": s.chips_per_host}}}
    if env := _env(launch):
        container["env"] = env
    pod = {"restartPolicy": "Never", "hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet",
           "terminationGracePeriodSeconds": launch.grace_seconds, "nodeSelector": selector,
           "tolerations": [{"key": "google.com/tpu", "operator": "Exists",
                            "effect": "NoSchedule"}],
           "containers": [container]}
    job = {"parallelism": s.hosts, "completions": s.hosts, "backoffLimit": 0,
           "template": {"spec": pod}}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": launch.name, "annotations": {
                "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
            "spec": {"failurePolicy": {"maxRestarts": launch.max_restarts},
                     "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": s.num_slices,
                                         "template": {"spec": job}}]}}


def manifest(launch: Launch) -> str:
    """The JobSet as YAML (PyYAML comes with flax, orbax and ml_collections)."""
    import yaml

    return yaml.safe_dump(jobset(launch), sort_keys=False, width=100)


def xpk_workload_argv(launch: Launch, cluster: str, where: list[str]) -> list[str]:
    """`xpk workload create` for the same run: xpk writes an equivalent JobSet (and its MEGASCALE
    variables); ling-jax train's resumable exit codes (4: a process was lost, 75: preempted, after
    its checkpoint) are made restartable, since xpk restarts only on 42 and 127-255 by default."""
    s = launch.slices
    return ["xpk", "workload", "create", f"--cluster={cluster}", f"--workload={launch.name}",
            f"--tpu-type={s.xpk_type}", f"--num-slices={s.num_slices}",
            f"--docker-image={launch.image}", f"--command={shlex.join(train_argv(launch))}",
            f"--max-restarts={launch.max_restarts}", "--restart-on-exit-codes=4,75",
            f"--termination-grace-period-seconds={launch.grace_seconds}", *where]


def xpk_cluster_argv(slices: Slices, cluster: str, where: list[str], spot: bool) -> list[str]:
    """`xpk cluster create`: a GKE cluster with one TPU node pool per slice."""
    return ["xpk", "cluster", "create", f"--cluster={cluster}", f"--tpu-type={slices.xpk_type}",
            f"--num-slices={slices.num_slices}", "--spot" if spot else "--on-demand", *where]
