"""Per-step loss of one job run as N processes × D devices beside 1 process × N·D devices.

    python benchmarks/multihost.py                       # colab_tiny's LM phases, 2×2 vs 1×4
    python benchmarks/multihost.py --processes 4 --devices 1 --steps 6

Both jobs are `ling-jax train` on localhost (ling_jax.cli.local_cluster: gloo collectives, one
coordinator) on the same data mesh; the table prints each step's loss and token count side by
side with the relative difference, then the wall time of each job. Informational: the tests in
tests/multihost/ assert the same equality on a smaller config.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

from ling_jax.cli import local_cluster

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_job(workdir: pathlib.Path, processes: int, devices: int, steps: int, config: str,
            timeout: float) -> tuple[dict[int, tuple[float, int]], float]:
    """({step: (loss, tokens)}, wall seconds) of one job."""
    mesh = processes * devices
    args = ["--config", config, f"--workdir={workdir}", "--sample_tokens=0",
            f"--config.mesh.data={mesh}", f"--max_steps={steps}",
            f"--config.phases.pretrain.steps={steps // 2}",
            f"--config.phases.pretrain.lr.warmup_steps={min(2, steps // 2)}",
            f"--config.phases.midtrain.lr.warmup_steps={min(2, steps - steps // 2)}"]
    t0 = time.perf_counter()
    results = local_cluster.run(args, processes, devices, timeout=timeout, cwd=str(ROOT))
    seconds = time.perf_counter() - t0
    for r in results:
        if r.returncode != 0:
            raise SystemExit(f"process {r.process_id} of the {processes}×{devices} job exited "
                             f"{r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], int(r["tokens"])) for r in rows if "loss" in r}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=2, help="devices per process")
    parser.add_argument("--steps", type=int, default=8, help="steps (half pretrain, half midtrain)")
    parser.add_argument("--config", default="experiments/colab_tiny.py")
    parser.add_argument("--timeout", type=float, default=1800)
    a = parser.parse_args()
    n, d = a.processes, a.devices
    with tempfile.TemporaryDirectory() as tmp:
        one, t_one = run_job(pathlib.Path(tmp) / "one", 1, n * d, a.steps, a.config, a.timeout)
        many, t_many = run_job(pathlib.Path(tmp) / "many", n, d, a.steps, a.config, a.timeout)
    print(f"{'step':>4}  {f'1×{n * d} loss':>12}  {f'{n}×{d} loss':>12}  {'rel diff':>9}  "
          f"{'tokens':>13}")
    worst = 0.0
    for step in sorted(one):
        (ref, t_ref), (got, t_got) = one[step], many.get(step, (float("nan"), -1))
        rel = abs(got - ref) / abs(ref)
        worst = max(worst, rel)
        print(f"{step:>4}  {ref:>12.7f}  {got:>12.7f}  {rel:>9.1e}  {t_ref:>6}/{t_got:<6}")
    print(f"worst relative loss difference {worst:.1e}; same steps: {sorted(one) == sorted(many)}")
    print(f"wall: 1×{n * d} {t_one:.0f} s, {n}×{d} {t_many:.0f} s (compile included)")


if __name__ == "__main__":
    main()
