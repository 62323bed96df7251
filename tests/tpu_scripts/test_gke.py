"""tpu_scripts/gke.py: the JobSet / xpk / kubectl commands it prints with --dry_run, and its errors."""

import pathlib
import shlex
import subprocess
import sys

import gke
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
TPU7X = ["--name", "ling-1t", "--image", "us-docker.pkg.dev/p/r/ling-jax:1", "--workdir",
         "gs://bucket/runs/ling-1t", "--config", "experiments/ling_1t_pretrain.py:tpu7x"]
# Two slices double the batch shards (expert 64 × dcn_data 2 = 128): every phase's batch must
# still split into whole sequences per shard per microbatch (the README's "Run on a pod" example).
V5P_2_TRAIN = ["--config.mesh.dcn_data=2", "--config.phases.pretrain_4k.microbatches=18",
               "--config.phases.context_32k.microbatches=18",
               "--config.phases.reasoning_32k.microbatches=18",
               "--config.phases.yarn_128k.batch_size=512", "--config.phases.yarn_128k.microbatches=4"]
V5P_2_LAUNCH = ["--name", "ling-1t", "--image", "img:1", "--workdir", "gs://bucket/runs/ling-1t",
                "--config", "experiments/ling_1t_pretrain.py:v5p_512", "--num_slices", "2"]
V5P_2 = [*V5P_2_LAUNCH, "--", *V5P_2_TRAIN]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # the README runs these from the clone root


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = gke.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _pod(manifest: dict) -> dict:
    return manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def test_tpu7x_single_slice_manifest(capsys):
    rc, out, err = _run(capsys, "manifest", *TPU7X, "--", "--max_steps=100",
                        "--config.checkpoint.every_steps=50")
    assert rc == 0
    m = yaml.safe_load(out)
    assert (m["apiVersion"], m["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    assert m["metadata"]["annotations"] == {
        "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}
    assert m["spec"]["failurePolicy"] == {"maxRestarts": 10}
    (rjob,) = m["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    # aot.topology tpu7x:4x8x8 = 256 chips, 4 per host VM → 64 pods; 512 devices = the mesh.
    assert rjob["replicas"] == 1 and job["parallelism"] == job["completions"] == 64
    assert job["backoffLimit"] == 0
    pod = _pod(m)
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu7x",
                                   "cloud.google.com/gke-tpu-topology": "4x8x8"}
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"google.com/tpu": 4}
    assert c["image"] == "us-docker.pkg.dev/p/r/ling-jax:1" and c["workingDir"] == "/ling-jax"
    assert c["command"] == ["ling-jax", "train", "--config=experiments/ling_1t_pretrain.py:tpu7x",
                            "--workdir=gs://bucket/runs/ling-1t", "--max_steps=100",
                            "--config.checkpoint.every_steps=50"]
    assert "env" not in c  # one slice: no DCN coordinator
    assert "512 devices" in err and "context=8 × expert=64" in err


def test_multislice_v5p_manifest_sets_the_dcn_variables(capsys):
    rc, out, _ = _run(capsys, "manifest", *V5P_2)
    assert rc == 0
    m = yaml.safe_load(out)
    rjob = m["spec"]["replicatedJobs"][0]
    assert rjob["replicas"] == 2 and rjob["template"]["spec"]["parallelism"] == 128  # 512 chips / 4
    pod = _pod(m)
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5p-slice"
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "8x8x8"
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    name = m["metadata"]["name"]
    # JobSet hostnames: <jobset>-<replicated job>-<job index>-<pod index>.<jobset>
    assert env["MEGASCALE_COORDINATOR_ADDRESS"]["value"] == f"{name}-{rjob['name']}-0-0.{name}"
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "2"
    assert env["MEGASCALE_SLICE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['jobset.sigs.k8s.io/job-index']"
    assert c["command"][-len(V5P_2_TRAIN):] == V5P_2_TRAIN


def test_apply_dry_run_is_the_exact_shell_that_applies_the_manifest(capsys, tmp_path):
    rc, manifest, _ = _run(capsys, "manifest", *TPU7X)
    rc2, out, _ = _run(capsys, "apply", *TPU7X, "--cluster", "c1", "--zone", "us-central1-c",
                       "--dry_run")
    assert rc == rc2 == 0
    assert out.splitlines()[0] == "gcloud container clusters get-credentials c1 " \
                                  "--location=us-central1-c"
    assert out.splitlines()[1] == "kubectl apply -f - <<'EOF'"
    # Run the printed lines with stand-ins for gcloud and kubectl: kubectl receives the manifest.
    got = tmp_path / "applied.yaml"
    script = f"gcloud() {{ :; }}\nkubectl() {{ cat > {got}; }}\n{out}"
    subprocess.run(["bash", "-c", script], check=True, timeout=30)
    assert got.read_text() == manifest


def test_xpk_runs_the_same_command_on_the_same_slices(capsys):
    _, manifest, _ = _run(capsys, "manifest", *V5P_2)
    rc, out, _ = _run(capsys, "xpk", *V5P_2_LAUNCH, "--cluster", "c1", "--zone", "z", "--dry_run",
                      "--", *V5P_2_TRAIN)
    assert rc == 0
    argv = shlex.split(out)
    assert argv[:3] == ["xpk", "workload", "create"]
    flags = dict(a[2:].split("=", 1) for a in argv[3:])
    assert shlex.split(flags["command"]) == _pod(yaml.safe_load(manifest))["containers"][0]["command"]
    assert (flags["tpu-type"], flags["num-slices"], flags["max-restarts"]) == ("v5p-8x8x8", "2", "10")
    assert (flags["cluster"], flags["workload"], flags["docker-image"]) == ("c1", "ling-1t", "img:1")


def test_create_takes_the_topology_from_the_experiment(capsys):
    rc, out, _ = _run(capsys, "create", "--cluster", "c1", "--zone", "z", "--spot", "--dry_run",
                      "--config", "experiments/ling_mini_2_pretrain.py")
    assert rc == 0
    assert out.strip() == ("xpk cluster create --cluster=c1 --tpu-type=v5p-2x2x4 --num-slices=1 "
                           "--spot --zone=z")


@pytest.mark.parametrize("argv, message", [
    (["manifest", *TPU7X, "--topology", "tpu7x:4x4x4"],
     "has 128 devices (1 × 64 chips × 2 per chip) but the mesh (context=8 × expert=64) uses 512"),
    (["manifest", *V5P_2_LAUNCH, "--", "--config.mesh.context=16"],
     "mesh.dcn_*: the DCN axes span 1 slice(s) but --num_slices is 2"),
    (["manifest", *V5P_2, "--config.phases.pretrain_4k.microbatches=5"],
     "phases.pretrain_4k.batch_size: 18432 is not divisible"),
    (["manifest", *V5P_2_LAUNCH, "--", "--config.mesh.dcn_data=2",
      "--config.phases.pretrain_4k.microbatches=18"],
     "phases.context_32k.batch_size: 2304 is not divisible by the batch shards (128, rule set "
     "'fsdp_ep') × microbatches (36); set phases.context_32k.microbatches to a divisor of 18"),
    (["manifest", *V5P_2[:-2]],
     "phases.yarn_128k.batch_size: 576 is not divisible by the batch shards (128, rule set "
     "'fsdp_ep') × microbatches (9); set phases.yarn_128k.batch_size to a multiple of 1152"),
    (["manifest", *TPU7X, "--topology", "v6e:4x4x4"], "the GKE path supports ['tpu7x', 'v5p']"),
    (["manifest", *TPU7X, "--topology", "tpu7x:4x8"], "expected GENERATION:AxBxC"),
    (["manifest", *TPU7X, "--workdir", "/tmp/run"], "use a gs:// path"),
    (["manifest", *TPU7X, "--name", "Ling_1T"], "--name 'Ling_1T'"),
    (["manifest", *TPU7X, "--", "--config.mesh.nope=3"], "an override names an unknown field"),
    (["manifest", *TPU7X[:2], *TPU7X[4:]], "manifest needs --image"),
    (["xpk", *TPU7X], "xpk needs --cluster and --zone"),
    (["apply", *TPU7X, "--cluster", "c1"], "--cluster needs --zone"),
])
def test_bad_requests_are_one_clear_line(capsys, argv, message):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and not out
    assert err.startswith("gke.py: error: ") and err.count("\n") == 1 and message in err


def test_runs_as_a_script():
    out = subprocess.run([sys.executable, "tpu_scripts/gke.py", "manifest", *TPU7X, "--dry_run"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["metadata"]["name"] == "ling-1t"


def _readme_pod_commands() -> list[list[str]]:
    section = (REPO / "README.md").read_text().split("## Run on a pod", 1)[1]
    text = section.replace("\\\n", " ")
    return [shlex.split(line)[2:] for line in text.splitlines()
            if line.startswith("python tpu_scripts/gke.py ")]


def test_readme_pod_commands_run_as_dry_runs(capsys):
    commands = _readme_pod_commands()
    assert [c[0] for c in commands] == ["image", "create", "apply", "manifest", "logs", "delete",
                                        "apply"]
    for argv in commands:
        if "--dry_run" not in argv:  # `manifest` only prints
            argv = [*argv[:argv.index("--")], "--dry_run", *argv[argv.index("--"):]]
        rc, out, err = _run(capsys, *argv)
        assert rc == 0 and out, (argv, err)
