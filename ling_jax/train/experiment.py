"""Experiment configs: a model, a tokenizer and an ordered list of phases, validated up front.

An experiment is an ml_collections ConfigDict (see experiments/colab_tiny.py):
  model: a model ConfigDict (ling_jax.config), tokenizer: {kind: builtin|hf, ...}, seed,
  optimizer: AdamW fields (ling_jax.train.optimizer), checkpoint: {every_steps, keep, keep_every,
  async_save}, log_every, phase_order: tuple of phase names, phases: {name: phase}.
A phase: kind (a key of ling_jax.train.phase_kinds.KIND_PATHS), steps or tokens, seq_len, batch_size,
  microbatches, data (ling_jax.data mixture), lr (ling_jax.train.schedules), rope {theta, scaling,
  max_position_embeddings}, bias_update_rate, mtp_weight, z_loss, checkpoint_every (0: experiment's).
Phases are addressed by name so CLI overrides read `--config.phases.pretrain.steps=50`.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from ling_jax.config import ConfigError, validate_model_config
from ling_jax.data.config import validate_data_config
from ling_jax.parallel.mesh import mesh_block
from ling_jax.paths import is_url
from ling_jax.train.phase_kinds import kind_names, phase_kind
from ling_jax.train.schedules import make_schedule

PHASE_DEFAULTS: dict[str, Any] = dict(
    kind="pretrain", steps=0, tokens=0, seq_len=256, batch_size=8, microbatches=1, loss_chunks=0,
    lr=None, rope=None, bias_update_rate=1e-3, mtp_weight=None, z_loss=0.0, checkpoint_every=0,
    sample_prompt="",
)


class ExperimentError(ConfigError):
    """An experiment config that cannot run; names the field."""


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ExperimentError(f"{field}: {message}")


def phase_names(cfg) -> list[str]:
    return list(cfg.phase_order)


def phase_steps(phase) -> int:
    """Steps of a phase: `steps`, or `tokens` divided by tokens per step (rounded up)."""
    if phase.get("steps", 0):
        return int(phase.steps)
    per_step = phase.seq_len * phase.batch_size
    return -(-int(phase.tokens) // per_step)


def phase_schedule(phase, updates: int) -> dict:
    """The phase's `lr` block with total_steps defaulting to its optimizer updates."""
    lr = dict(phase.lr)
    lr.setdefault("total_steps", updates)
    return lr


def _updates_note(phase) -> str:
    return ("an rl phase's schedule counts optimizer updates: steps x rl.epochs x rl.minibatches"
            if phase.kind == "rl" else f"the phase has {phase_steps(phase)} steps")


def phase_model_config(model_cfg, phase) -> ml_collections.ConfigDict:
    """The model config a phase runs with: RoPE θ / YaRN / context overrides (context extension),
    and the phase's loss_chunks (0: the model's) — chunking pays at long context only."""
    cfg = model_cfg.copy_and_resolve_references()
    if phase.get("loss_chunks", 0):
        cfg.loss_chunks = phase.loss_chunks
    rope = phase.get("rope", None) or {}
    if rope.get("theta"):
        cfg.rope_theta = float(rope["theta"])
    if rope.get("max_position_embeddings"):
        cfg.max_position_embeddings = int(rope["max_position_embeddings"])
    if rope.get("scaling"):
        cfg.rope_scaling = dict(rope["scaling"])
    return cfg


def _validate_phase(name: str, phase, cfg) -> None:
    where = f"phases.{name}"
    unknown = sorted(set(phase.keys()) - set(PHASE_DEFAULTS) - {"data", "rl", "sft"})
    _require(not unknown, where, f"unknown field(s) {unknown}; allowed {sorted(PHASE_DEFAULTS)}")
    _require("sft" not in phase or phase.kind == "sft", f"{where}.sft",
             f"only phases of kind 'sft' take an sft block (this one is {phase.kind!r})")
    _require(phase.kind in kind_names(), f"{where}.kind",
             f"{phase.kind!r} is not one of {kind_names()}")
    _require(bool(phase.get("steps", 0)) != bool(phase.get("tokens", 0)), where,
             "set exactly one of `steps` or `tokens` (> 0)")
    for field in ("seq_len", "batch_size", "microbatches"):
        value = phase.get(field)
        _require(isinstance(value, int) and value > 0, f"{where}.{field}",
                 f"must be a positive int, got {value!r}")
    chunks = phase.get("loss_chunks", 0)
    _require(isinstance(chunks, int) and not isinstance(chunks, bool) and chunks >= 0,
             f"{where}.loss_chunks", f"must be an int >= 0 (0: model.loss_chunks), got {chunks!r}")
    _require(phase.batch_size % phase.microbatches == 0, f"{where}.batch_size",
             f"{phase.batch_size} must be divisible by microbatches={phase.microbatches}")
    _require(phase.seq_len <= phase_model_config(cfg.model, phase).max_position_embeddings,
             f"{where}.seq_len", f"{phase.seq_len} exceeds model max_position_embeddings; raise it "
             "with phases.<name>.rope.max_position_embeddings")
    _require(phase.get("lr") is not None, f"{where}.lr", "missing learning-rate schedule")
    try:
        make_schedule(phase.lr)
    except ValueError as e:
        raise ExperimentError(f"{where}.lr: {e}") from None
    try:
        validate_model_config(phase_model_config(cfg.model, phase))
    except ConfigError as e:
        raise ExperimentError(f"{where}.rope: {e}") from None
    try:
        validate_data_config(phase.data)
    except ValueError as e:
        raise ExperimentError(f"{where}.data: {e}") from None
    _require(phase.bias_update_rate >= 0, f"{where}.bias_update_rate", "must be >= 0")
    kind = phase_kind(phase.kind)
    kind.validate(name, phase, cfg)
    try:  # the length the runner gives it: warmup > phase length fails here, not mid-run
        make_schedule(phase_schedule(phase, getattr(kind, "optimizer_updates", phase_steps)(phase)))
    except ValueError as e:
        raise ExperimentError(f"{where}.lr: {e} ({_updates_note(phase)})") from None


def _validate_tokenizer(tok) -> None:
    _require(tok.kind in ("builtin", "hf"), "tokenizer.kind",
             f"{tok.kind!r} is not one of ['builtin', 'hf']")
    if tok.kind != "hf":
        return
    path = str(tok.get("path", "") or "")
    _require(bool(path), "tokenizer.path", "kind 'hf' needs the path of a tokenizer.json")
    if is_url(path):
        return
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    _require(os.path.isfile(file), "tokenizer.path",
             f"{os.path.abspath(file)} does not exist; give a tokenizer.json (or its directory)")


def validate_experiment(cfg) -> None:
    """Raise ExperimentError naming the first impossible field; builds and compiles nothing."""
    for field in ("model", "phase_order", "phases", "optimizer", "tokenizer", "checkpoint"):
        _require(field in cfg, field, "missing")
    try:
        validate_model_config(cfg.model)
    except ConfigError as e:
        raise ExperimentError(str(e)) from None
    names = phase_names(cfg)
    _require(len(names) > 0, "phase_order", "needs at least one phase")
    _require(len(set(names)) == len(names), "phase_order", f"duplicate phase names in {names}")
    for name in names:
        _require(name in cfg.phases, "phase_order", f"names phase {name!r} missing from `phases` "
                 f"(defined: {sorted(cfg.phases.keys())})")
        _validate_phase(name, cfg.phases[name], cfg)
    _validate_tokenizer(cfg.tokenizer)
    _require(cfg.checkpoint.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
    every = cfg.get("fp8_monitor_every", 0)
    _require(isinstance(every, int) and every >= 0, "fp8_monitor_every",
             f"must be an int >= 0 (0: off), got {every!r}")
    _require(not every or cfg.model.fp8, "fp8_monitor_every",
             "monitors FP8 numerics; set model.fp8=true or fp8_monitor_every=0")


def with_phase_defaults(phase: dict) -> ml_collections.ConfigDict:
    """A phase ConfigDict with every field present (so CLI overrides of any field work)."""
    return ml_collections.ConfigDict({**PHASE_DEFAULTS, **phase})


# Builders the experiment presets in experiments/ share.

def paper_optimizer() -> ml_collections.ConfigDict:
    """AdamW 0.9/0.95, weight decay 0.1, clip 1.0 (reference §6)."""
    return ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                                          max_grad_norm=1.0, mu_dtype="float32"))


def checkpointing(every_steps: int, keep: int = 3, keep_every: int = 0) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(every_steps=every_steps, keep=keep, keep_every=keep_every,
                                          async_save=True))


def named_phases(*named: tuple[str, dict]) -> tuple[tuple[str, ...], ml_collections.ConfigDict]:
    """(phase_order, phases) from (name, fields) pairs, every field present for CLI overrides."""
    return tuple(n for n, _ in named), ml_collections.ConfigDict(
        {n: with_phase_defaults(fields) for n, fields in named})


def experiment(model, *, tokenizer: dict, phases: list, checkpoint, seed: int = 0,
               log_every: int = 1, sample_prompt: str = "",
               fp8_monitor_every: int = 0, nonfinite_limit: int = 3) -> ml_collections.ConfigDict:
    """An experiment config. nonfinite_limit: non-finite steps in a row (each skipped) after which
    the run stops with an error (0: never)."""
    order, phase_dict = named_phases(*phases)
    return ml_collections.ConfigDict(dict(
        model=model, tokenizer=ml_collections.ConfigDict(tokenizer), seed=seed,
        optimizer=paper_optimizer(), checkpoint=checkpoint, log_every=log_every,
        phase_order=order, phases=phase_dict, sample_prompt=sample_prompt,
        fp8_monitor_every=fp8_monitor_every, nonfinite_limit=nonfinite_limit,
        mesh=mesh_block()))  # one device; every field present so --config.mesh.X=... works


def paper_pretrain(model, *, peak_lr: float, batch_4k: int) -> ml_collections.ConfigDict:
    """The Ling 2.0 recipe (reference §6): 4K at θ 1e4 → 32K at θ 6e5 → reasoning mid-train → 128K YaRN.

    Batch sizes are in 4K sequences (paper Table 1); longer phases keep the tokens per step. The data
    blocks default to the built-in corpus so the preset validates anywhere; point them at your
    ArrayRecord mixtures, e.g. --config.phases.pretrain_4k.data.sources.web.path=gs://...
    """
    model = model.copy_and_resolve_references()
    model.initializer_range = 0.006
    model.rope_theta = 10000.0
    data = dict(sources=dict(corpus=dict(kind="builtin_python", split="train")))
    tokens_per_step = batch_4k * 4096
    lr = dict(kind="wsm", peak_lr=peak_lr, warmup_steps=2000)
    def stage(seq_len, tokens, **kw):
        return dict(kind=kw.pop("kind", "pretrain"), tokens=tokens, seq_len=seq_len,
                    batch_size=max(tokens_per_step // seq_len, 1), data=data, **kw)
    phases = [
        ("pretrain_4k", stage(4096, 20 * 10**12, lr=lr, bias_update_rate=1e-3)),
        ("context_32k", stage(32768, 150 * 10**9, kind="midtrain", bias_update_rate=1e-4,
                              lr=dict(lr, warmup_steps=0),
                              rope=dict(theta=600000.0, max_position_embeddings=32768))),
        ("reasoning_32k", stage(32768, 600 * 10**9, kind="midtrain", bias_update_rate=1e-4,
                                lr=dict(lr, warmup_steps=0),
                                rope=dict(theta=600000.0, max_position_embeddings=32768))),
        ("yarn_128k", stage(131072, 20 * 10**9, kind="midtrain", bias_update_rate=1e-4,
                            lr=dict(lr, warmup_steps=0),
                            rope=dict(theta=600000.0, max_position_embeddings=131072,
                                      scaling=dict(type="yarn", factor=4.0,
                                                   original_max_position_embeddings=32768)))),
    ]
    # Runnable default: a 32K built-in BPE. For real runs use Ling's tokenizer:
    # --config.tokenizer.kind=hf --config.tokenizer.path=/path/to/tokenizer.json
    return experiment(model, tokenizer=dict(kind="builtin", vocab_size=32768, cache_dir="", path=""),
                      phases=phases, checkpoint=checkpointing(every_steps=1000, keep=3,
                                                              keep_every=10000))


def fit_long_phases(cfg, batch_shards: int, tokens_per_step: int,
                    names=("context_32k", "reasoning_32k", "yarn_128k")) -> None:
    """Give each long phase the given tokens per step in whole sequences, rounded to the nearest
    multiple of the mesh's batch shards, with one sequence per batch shard per microbatch (the
    context axis then splits each sequence; e.g. 2268 × 32K → 2272 = 32 × 71 on 32 shards)."""
    for name in names:
        phase = cfg.phases[name]
        per_shard = max(1, round(tokens_per_step / phase.seq_len / batch_shards))
        phase.batch_size, phase.microbatches = per_shard * batch_shards, per_shard
