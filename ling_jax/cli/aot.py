"""`ling-jax aot --config EXPERIMENT [--topology NAME] [--num-slices N] [--phase NAME] [--json]`.

Compiles the experiment's full train step for a TPU topology on this machine (libtpu, no TPU) and
prints compile time, per-device memory (arguments, outputs, temporaries, peak), FLOPs and bytes
(XLA cost analysis), collective bytes per step (from the compiled HLO, loops multiplied out) and an
estimated step time and MFU bound from the chip's published figures (launch/chips.py). The
topology and slice count default to the experiment's `aot` block; the mesh is its `mesh` block
(override fields with --config.mesh.fsdp=64 etc.). Exit status 1 when the step does not fit.
`--dump_to DIR` (a new or empty directory) keeps XLA's dump of the compile: the optimized HLO
(`*after_optimizations.txt`), the buffer assignment with the live buffers at the memory peak
(`*buffer-assignment.txt`) and the memory-usage report, to see what fills the peak.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (get_config())",
                                          lock_config=False)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:8x16x16 or tpu7x:4x4x8 "
                                "(default: the experiment's aot.topology)")
_NUM_SLICES = flags.DEFINE_integer("num-slices", None, "slices over DCN (default: aot.num_slices "
                                   "or 1)")
flags.DEFINE_alias("num_slices", "num-slices")
_PHASE = flags.DEFINE_string("phase", None, "phase to compile (default: the first)")
_JSON = flags.DEFINE_bool("json", False, "print JSON instead of a table")
_DUMP_TO = DEFINE_path("dump_to", None, "keep XLA's dump of the compile here (optimized HLO, "
                       "buffer assignment, memory-usage report); a new or empty directory")

_GB = 1e9


def _table(r: dict) -> str:
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
    lines = [
        f"{r['phase']}: seq {r['seq_len']} × global batch {r['global_batch']} "
        f"(microbatches {r['microbatches']}) on {r['topology']} × {r['num_slices']} slice(s): "
        f"{r['devices']} devices ({r['device_kind']}); mesh {mesh}; rules {r['rules']}",
        f"  {'compile time':<28}{r['compile_seconds']:>10.1f} s",
    ]
    if r["error"]:
        return "\n".join([*lines, f"  DOES NOT FIT: {r['error']}"])
    lines.append("  per-device memory (GB):")
    for key, label in [("argument_bytes", "arguments"), ("output_bytes", "outputs"),
                       ("alias_bytes", "aliased (donated state)"), ("temp_bytes", "temporaries"),
                       ("code_bytes", "generated code"), ("peak_bytes", "peak")]:
        lines.append(f"    {label:<26}{r[key] / _GB:>10.2f}")
    if r["hbm_bytes"]:
        verdict = "fits" if r["fits"] else "DOES NOT FIT"
        lines.append(f"    {'HBM per device':<26}{r['hbm_bytes'] / _GB:>10.2f}   {verdict} "
                     f"({r['peak_bytes'] / r['hbm_bytes']:.0%})")
    if r["pipeline_bubble"]:
        lines.append(f"  {'pipeline bubble':<28}{r['pipeline_bubble']:>10.1%}")
    lines.append(f"  {'XLA FLOPs per device':<28}{r['flops_per_device']:>10.3e}   (loop bodies "
                 "counted once)")
    lines.append(f"  {'XLA bytes per device':<28}{r['bytes_accessed_per_device']:>10.3e}   (loop "
                 "bodies counted once)")
    lines.append(f"  {'model FLOPs per device':<28}{r['model_flops_per_device']:>10.3e}")
    lines.extend(_collective_lines(r))
    return "\n".join(lines)


def _collective_lines(r: dict) -> list[str]:
    lines = [f"  collective bytes per device per step (GB on the wire): "
             f"{r['collective_bytes_total'] / _GB:.2f}"]
    lines += [f"    {op:<26}{b / _GB:>10.2f}" for op, b in r["collective_bytes"].items() if b]
    est = r["estimate"]
    if "error" in est:
        lines.append(f"  note: {est['error']}")
    if "chip" in est:
        lines += [f"  estimate on {est['chip']} (published peak bf16 and ICI bandwidth):",
                  f"    {'compute (model FLOPs)':<26}{est['compute_seconds']:>10.2f} s",
                  f"    {'collectives (ICI)':<26}{est['collective_seconds']:>10.2f} s",
                  f"    {'step, full overlap':<26}{est['step_seconds_bound']:>10.2f} s",
                  f"    {'step, no overlap':<26}{est['step_seconds_serial']:>10.2f} s",
                  f"    {'MFU bound':<26}{est['mfu_bound']:>10.1%}"]
    return lines


def _check_dump_dir(path: str | None) -> None:
    """A dump goes into a new or empty directory only (XLA would overwrite same-named files)."""
    if path is None or not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise ValueError(f"--dump_to {path}: exists and is not a directory; name a new directory")
    if os.listdir(path):
        raise ValueError(f"--dump_to {path}: directory is not empty (an earlier dump would be "
                         "overwritten); name a new or empty directory")


@user_errors_exit
def main(argv) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    cfg = _CONFIG.value
    if cfg is None:
        raise ValueError("--config is required, e.g. --config experiments/ling_1t_pretrain.py")
    import jax

    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")  # the TPU devices are compile-only
    from ling_jax.launch.aot import compile_train_step, topology_devices
    from ling_jax.train.experiment import validate_experiment

    validate_experiment(cfg)
    _check_dump_dir(_DUMP_TO.value)
    aot = cfg.get("aot", None) or {}
    topology = _TOPOLOGY.value or aot.get("topology", None)
    if not topology:
        raise ValueError("no topology: pass --topology (e.g. v5p:8x16x16) or set aot.topology")
    slices = _NUM_SLICES.value or int(aot.get("num_slices", 1) or 1)
    devices = topology_devices(topology, slices)
    report = compile_train_step(cfg, devices, topology=topology, num_slices=slices,
                                phase=_PHASE.value, dump_dir=_DUMP_TO.value).as_dict()
    print(json.dumps(report, indent=1) if _JSON.value else _table(report))
    if report["fits"] is False:
        sys.exit(1)
