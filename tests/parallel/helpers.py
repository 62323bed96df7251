"""A very small experiment, batches and a step runner shared by the sharded-training tests."""

import functools

import jax
import numpy as np

from ling_jax.config import get_preset
from ling_jax.train.experiment import checkpointing, experiment
from ling_jax.train.loop import init_state
from ling_jax.train.phases import PhaseContext, make_phase_optimizer, phase_graphdef
from ling_jax.train.step import StepConfig, train_step

VOCAB, BATCH, SEQ = 256, 8, 16


def small_cfg(mesh=None, *, backend="blocked", remat="none", microbatches=1, layers=3,
              vocab=VOCAB):
    model = get_preset("tiny")
    model.update(dict(hidden_size=64, num_hidden_layers=layers, first_k_dense_replace=1,
                      intermediate_size=128, num_experts=8, num_experts_per_tok=2, n_group=2,
                      topk_group=1, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=vocab,
                      moe_backend=backend, remat_policy=remat))
    data = dict(sources=dict(python=dict(kind="builtin_python", split="train", max_files=5)))
    pretrain = dict(kind="pretrain", steps=3, seq_len=SEQ, batch_size=BATCH,
                    microbatches=microbatches, data=data, bias_update_rate=1e-2, z_loss=1e-3,
                    lr=dict(kind="wsm", peak_lr=3e-3, warmup_steps=1))
    cfg = experiment(model, tokenizer=dict(kind="builtin", vocab_size=vocab, cache_dir=""),
                     phases=[("pretrain", pretrain)], checkpoint=checkpointing(every_steps=0))
    # Adam's default eps=1e-8 turns fp32 rounding in cancelling gradient entries (|g| ~ 1e-9)
    # into lr-sized update differences; 1e-5 keeps Adam's behaviour on real gradients.
    cfg.optimizer.eps = 1e-5
    if mesh is not None:
        cfg.mesh = mesh
    return cfg


def random_batch(seed: int, batch=BATCH, seq=SEQ) -> dict:
    """Two packed documents per row, a padded tail on row 0, random tokens and targets."""
    rng = np.random.default_rng(seed)
    seg = np.ones((batch, seq), np.int32)
    seg[:, seq // 2:] = 2
    seg[0, -3:] = 0
    pos = np.concatenate([np.arange(seq // 2), np.arange(seq - seq // 2)])
    return dict(inputs=rng.integers(2, VOCAB, (batch, seq)).astype(np.int32),
                targets=rng.integers(2, VOCAB, (batch, seq)).astype(np.int32),
                loss_mask=(seg > 0).astype(np.float32), segment_ids=seg,
                positions=np.broadcast_to(pos, (batch, seq)).astype(np.int32).copy())


def step_parts(cfg):
    """(step fn, initial state fn, abstract state) as the LM phase builds them."""
    ctx = PhaseContext(cfg, None, 0, 0)
    phase = cfg.phases.pretrain
    opt = make_phase_optimizer(ctx, phase)
    m = cfg.model
    sc = StepConfig(microbatches=phase.microbatches, mtp_weight=m.mtp_loss_scaling_factor,
                    z_coef=phase.z_loss, bias_update_rate=phase.bias_update_rate,
                    num_mtp=m.num_nextn_predict_layers,
                    num_moe=m.num_hidden_layers - m.first_k_dense_replace)
    fn = functools.partial(train_step, graphdef=phase_graphdef(m), optimizer=opt, sc=sc)
    make = lambda: init_state(cfg, opt)
    return fn, make, jax.eval_shape(make)


def run_steps(step, state, steps=3):
    metrics = []
    for i in range(steps):
        state, m = step(state, random_batch(i))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


def rel(a, b) -> float:
    """‖a − b‖ / ‖a‖ in float64 (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norm = np.linalg.norm(a)
    return float(np.linalg.norm(a - b) / norm) if norm else float(np.linalg.norm(b))
