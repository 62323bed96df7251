"""Phase kinds of the one train loop. A kind builds a runner for one phase of an experiment:

    runner.step(state) -> (state, metrics)       one optimizer step
    runner.data_state() / set_data_state(s)     checkpointable input state (JSON-able)
    runner.close()
The loop owns ordering, checkpoints, logging and resume; kinds own their data and step. Which
class runs a kind is looked up in train/phase_kinds.py (the RL kind lives in ling_jax.rl).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
import zlib
from typing import Any, Protocol

import jax
from flax import nnx

from ling_jax.data.pipeline import make_pipeline
from ling_jax.model.moe import ExpertBias
from ling_jax.model.transformer import LingForCausalLM
from ling_jax.train.experiment import phase_model_config, phase_schedule, phase_steps
from ling_jax.train.optimizer import make_optimizer
from ling_jax.train.schedules import make_schedule
from ling_jax.train.step import StepConfig, train_step


@dataclasses.dataclass
class PhaseContext:
    """What every phase gets from the loop."""

    experiment: Any  # the experiment ConfigDict
    tokenizer: Any
    phase_index: int
    start_step: int  # global optimizer step at which the phase begins
    process_index: int = 0
    process_count: int = 1
    shard_fn: Any = None  # optional: (step_fn, state, batch_example) -> compiled step (parallel/)
    workdir: pathlib.Path | None = None  # the run directory (the rl kind keeps its reference policy)
    # (global batch size) -> the rows of each global batch that this process reads (ascending);
    # None: the contiguous block of process_index.
    rows_fn: Any = None
    # host batch of this process's rows (those of rows_fn, ascending) -> global arrays on the
    # mesh; None: one device (jnp.asarray).
    place_batch: Any = None
    # () -> context manager that traces steps under the plan (mesh, EP and context-parallel
    # settings); phases that jit their own functions (rl) enter it. None: one device.
    trace_context: Any = None

    def batch_rows(self, batch_size: int) -> list[int] | None:
        return None if self.rows_fn is None else self.rows_fn(batch_size)


class PhaseRunner(Protocol):
    steps: int
    model_cfg: Any

    def step(self, state: dict) -> tuple[dict, dict]: ...
    def data_state(self) -> dict | None: ...
    def set_data_state(self, state: dict) -> None: ...
    def close(self) -> None: ...


def phase_graphdef(model_cfg):
    """The graph of the model as this phase runs it (its RoPE settings are static)."""
    abstract = nnx.eval_shape(lambda: LingForCausalLM(model_cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract, nnx.Param, ExpertBias)[0]


def make_phase_optimizer(ctx: PhaseContext, phase):
    lr = phase_schedule(phase, LMPhase.optimizer_updates(phase))
    lr["start_step"] = ctx.start_step
    return make_optimizer(ctx.experiment.optimizer, make_schedule(lr))


def phase_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


class LMPhase:
    """Next-token (+MTP) training on a packed data mixture: the pretrain and midtrain kinds."""

    @staticmethod
    def validate(name: str, phase, cfg) -> None:
        del name, phase, cfg  # everything an LM phase needs is checked by validate_experiment

    @staticmethod
    def optimizer_updates(phase) -> int:
        """Optimizer updates of the phase (its schedule's default total_steps): one per step."""
        return phase_steps(phase)

    def __init__(self, ctx: PhaseContext, name: str, phase):
        exp = ctx.experiment
        self.name, self.steps = name, phase_steps(phase)
        self.model_cfg = phase_model_config(exp.model, phase)
        self.optimizer = make_phase_optimizer(ctx, phase)
        mtp_weight = phase.mtp_weight
        if mtp_weight is None:
            mtp_weight = self.model_cfg.mtp_loss_scaling_factor
        sc = StepConfig(
            microbatches=phase.microbatches, mtp_weight=float(mtp_weight),
            z_coef=float(phase.z_loss), bias_update_rate=float(phase.bias_update_rate),
            num_mtp=self.model_cfg.num_nextn_predict_layers,
            num_moe=self.model_cfg.num_hidden_layers - self.model_cfg.first_k_dense_replace)
        fn = functools.partial(train_step, graphdef=phase_graphdef(self.model_cfg),
                               optimizer=self.optimizer, sc=sc)
        self._step = (ctx.shard_fn(fn) if ctx.shard_fn else jax.jit(fn, donate_argnums=(0,)))
        self.data = make_pipeline(
            phase.data, seq_len=phase.seq_len, batch_size=phase.batch_size,
            tokenizer=ctx.tokenizer, seed=phase_seed(exp.seed, name),
            rows=ctx.batch_rows(phase.batch_size), process_index=ctx.process_index,
            process_count=ctx.process_count, vocab_size=exp.model.vocab_size)
        self.tokens_per_step = phase.seq_len * phase.batch_size
        self.last_batch: dict | None = None

    def step(self, state: dict) -> tuple[dict, dict]:
        t0 = time.perf_counter()
        self.last_batch = next(self.data)
        self.data_seconds = time.perf_counter() - t0  # the loop's goodput split reads it
        return self._step(state, self.last_batch)

    def data_state(self) -> dict | None:
        return self.data.get_state()

    def set_data_state(self, state: dict) -> None:
        self.data.set_state(state)

    def close(self) -> None:
        self.data.close()
