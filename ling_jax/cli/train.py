"""`ling-jax train --config experiments/colab_tiny.py [--config.FIELD=VALUE ...] [--workdir DIR]`.

An experiment with a `mesh` block of more than one device trains sharded on it (override with
e.g. --config.mesh.fsdp=4); a mesh that does not fit the devices, model or batch stops with one
line before anything compiles. --workdir may be a gs:// path.
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

from ling_jax.cli import distributed
from ling_jax.cli.errors import user_errors_exit
from ling_jax.cli.path_flags import DEFINE_path

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (get_config())",
                                          lock_config=False)
_WORKDIR = DEFINE_path("workdir", "runs/default", "run directory: checkpoints, metrics, plots")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "stop after this global step (smoke tests)")
_SAMPLE_TOKENS = flags.DEFINE_integer("sample_tokens", 48, "tokens of the closing sample (0: none)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "multi-process: HOST:PORT of process 0's coordinator (with "
                                   "--num_processes and --process_id; none: auto-detect on TPU)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process: this process's id (0..N-1)")
_RESTORE_STEP = flags.DEFINE_integer("restore_step", None,
                                     "resume from this checkpoint step (default: the newest "
                                     "intact one; a damaged newest one is reported and skipped)")
_PROFILE_STEPS = flags.DEFINE_string("profile_steps", None,
                                     "A:B: JAX profiler trace of global steps A..B under "
                                     "WORKDIR/profile/host_<i> (TensorBoard / XProf)")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 60,
                                  "multi-process: a process silent this long is declared lost and "
                                  "every other process exits non-zero")


class ProgressReporter:
    """A one-line progress bar: phase, step, loss, tokens/s, MFU, ETA."""

    def __init__(self):
        self.bar, self.t0, self.first_loss, self.start_step = None, time.time(), None, 0
        self.last_lm: dict | None = None  # last record of an LM phase (an rl phase may follow)
        self.tool_calls: dict | None = None  # the closing record of an sft phase (before/after)

    def on_start(self, info: dict) -> None:
        from tqdm import tqdm

        total = sum(info["steps"])
        self.start_step = info["resume_step"] or 0
        print(f"phases {info['phases']} ({total} steps); peak {info['peak_flops'] / 1e9:.0f} "
              f"GFLOP/s per device ({info['peak_source']}); mesh {info.get('mesh', 'one device')}; "
              f"workdir {info['workdir']}")
        if info["resume_step"]:
            print(f"resuming from step {info['resume_step']}")
        self.bar = tqdm(total=total, initial=self.start_step, dynamic_ncols=True, smoothing=0.1)

    def on_step(self, record: dict, info: dict) -> None:
        if self.first_loss is None:
            self.first_loss = record["loss"]
        if "lm_loss" in record:
            self.last_lm = record
        if "tool_call_delta" in record:
            self.tool_calls = record
        self.bar.set_description(f"{record['phase']}", refresh=False)
        self.bar.set_postfix_str(f"loss {record['loss']:.3f} lm {record.get('lm_loss', float('nan')):.3f} "
                                 f"{record['tokens_per_sec']:.0f} tok/s mfu {record['mfu']:.1%}",
                                 refresh=False)
        self.bar.update(1)

    def on_phase_end(self, info: dict) -> None:
        self.bar.write(f"phase {info['phase']} done: loss {info['record'].get('loss', float('nan')):.3f}"
                       f"; plot {info['plot']}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _sample(result, cfg, max_new: int) -> str:
    from flax import nnx

    from ling_jax.model.moe import ExpertBias
    from ling_jax.model.transformer import LingForCausalLM
    from ling_jax.train.sample import greedy_sample

    prompt = cfg.get("sample_prompt", "") or "def "
    tok = result.tokenizer
    abstract = nnx.eval_shape(lambda: LingForCausalLM(cfg.model, rngs=nnx.Rngs(0)))
    graphdef = nnx.split(abstract, nnx.Param, ExpertBias)[0]
    ids = greedy_sample(graphdef, result.state["params"], result.state["biases"], tok.encode(prompt),
                        max_new_tokens=max_new, eos_id=tok.eos_id)
    return prompt + tok.decode(ids)


# Exit codes a scheduler can act on (README "Exit codes").
EXIT_PREEMPTED = 75  # SIGTERM: checkpoint saved; rerun the same command to resume (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C: checkpoint saved; rerun to resume
EXIT_NONFINITE = 3  # non-finite steps in a row: nothing bad saved; lower the lr or fix the data
EXIT_LOST_PROCESS = distributed.EXIT_LOST_PROCESS  # a process was lost; rerun to resume


@user_errors_exit
def main(argv) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    cfg = _CONFIG.value
    if cfg is None:
        raise ValueError("--config is required, e.g. --config experiments/colab_tiny.py")
    from ling_jax.train.profiling import parse_profile_steps

    profile_steps = parse_profile_steps(_PROFILE_STEPS.value)
    # Before anything touches a device (and after ling-jax's one allocator re-exec).
    multi = distributed.initialize(distributed.DistributedArgs(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _HEARTBEAT.value))
    import jax

    from ling_jax.train.experiment import validate_experiment
    from ling_jax.train.loop import run_experiment
    from ling_jax.train.run_control import NonFiniteError

    validate_experiment(cfg)  # before anything is built or compiled
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    primary = jax.process_index() == 0
    reporter = ProgressReporter() if primary else None
    try:
        result = run_experiment(cfg, _WORKDIR.value, reporter=reporter,
                                max_steps=_MAX_STEPS.value, profile_steps=profile_steps,
                                restore_step=_RESTORE_STEP.value)
    except NonFiniteError as e:
        _exit(f"ling-jax: error: {e}", EXIT_NONFINITE, multi, reporter)
    except KeyboardInterrupt:  # Ctrl-C before the loop listens for it, or a second Ctrl-C
        _exit("ling-jax: interrupted; rerun the same command to resume from the last complete "
              "checkpoint", EXIT_INTERRUPTED, multi, reporter)
    except Exception as e:  # noqa: BLE001  (multi-process: a lost peer surfaces here)
        if not multi or isinstance(e, ValueError):
            raise
        _exit(f"ling-jax: error: {distributed.describe_failure(e)}; rerun the same command on "
              "every process to resume from the last checkpoint", EXIT_LOST_PROCESS, multi,
              reporter)
    finally:
        if reporter is not None:
            reporter.close()
    sample = None
    if _SAMPLE_TOKENS.value and result.stop_reason == "finished":
        sample = _sample(result, cfg, _SAMPLE_TOKENS.value)  # every process: a collective
    if primary:
        _summary(result, reporter, sample)
    code = {"preempted": EXIT_PREEMPTED, "interrupted": EXIT_INTERRUPTED}.get(result.stop_reason)
    if code:
        _exit(None, code, multi)


def _exit(message: str | None, code: int, multi: bool,
          reporter: ProgressReporter | None = None) -> None:
    """Print one line and exit with `code`; a multi-process run skips JAX's exit handlers, whose
    distributed shutdown aborts when a peer is gone. The progress bar is closed first, so the
    line starts a line of its own."""
    if reporter is not None:
        reporter.close()
    if message:
        print(message, file=sys.stderr)
    if multi:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _summary(result, reporter: ProgressReporter, sample: str | None) -> None:
    m = result.final_metrics
    status = {"preempted": "preempted (checkpoint saved; rerun to resume)",
              "interrupted": "interrupted (checkpoint saved; rerun to resume)",
              "max_steps": "stopped at --max_steps (checkpoint saved)"}.get(result.stop_reason,
                                                                          "finished")
    print(f"\n{status} at step {result.global_step} in {time.time() - reporter.t0:.0f} s")
    print(f"time: {result.time_split}")
    lm = m if m and "lm_loss" in m else reporter.last_lm  # an rl phase's loss is no LM loss
    if lm:
        print(f"final loss {lm['loss']:.4f} (lm {lm['lm_loss']:.4f}, "
              f"mtp {lm.get('mtp_loss', float('nan')):.4f}; {lm['phase']} step {lm['step']}); "
              f"first step loss {reporter.first_loss:.4f}" if reporter.first_loss else "")
    if m and "heldout_delta" in m:
        from ling_jax.rl.evaluation import difference_text

        tokens = (f"; mean response tokens {m['heldout_tokens_before']:.1f} -> "
                  f"{m['heldout_tokens_end']:.1f}" if "heldout_tokens_before" in m else "")
        print(f"{m['phase']}: held-out accuracy {m['heldout_before']:.3f} -> "
              f"{m['heldout_after']:.3f} (n={int(m['heldout_n'])}), {difference_text(m)}{tokens}")
    if reporter.tool_calls:
        from ling_jax.sft.evaluation import describe_change

        print(f"{reporter.tool_calls['phase']}: {describe_change(reporter.tool_calls)}")
    print(f"checkpoints: {result.checkpoint_dir}\nmetrics: {result.workdir / 'metrics.jsonl'} "
          f"(TensorBoard: {result.workdir / 'tensorboard'})")
    if result.final_model:
        print(f"final model: {result.final_model} (ling-jax export-hf --checkpoint "
              f"{result.final_model} --out DIR)")
    for plot in result.plots:
        print(f"plot: {plot}")
    if sample is not None:
        print("sample:\n" + sample)
