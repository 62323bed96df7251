"""ling_1t: the paper's pre-training recipe (reference §6; peak LR 1.86e-4, 18144 x 4K sequences).

4K context at θ 1e4 (20T tokens) → 32K context extension at θ 6e5 (150B, bias rate 1e-4) →
reasoning mid-training at 32K (600B) → 128K with YaRN (factor 4). AdamW 0.9/0.95, wd 0.1, clip 1.0,
init std 0.006, WSM (2,000 warmup steps, then constant; merge with ling-jax merge-checkpoints).

Scale-out of the 4K phase (`ling-jax aot --config experiments/ling_1t_pretrain.py[:tpu7x]`;
libtpu 0.0.52, per-device memory from XLA, remat full, EP ragged all-to-all, capacity 1.25):
    config      topology                   mesh                 batch x microbatches  peak   HBM
    (default)   v5p:4x8x8  (256 chips)     tensor 8 x expert 32  18144 x 567          65.0   95 GB
    :v5p_512    v5p:8x8x8  (512 chips)     fsdp 8 x expert 64    18432 x 36           46.9   95 GB
    :tpu7x      tpu7x:4x8x8 (512 devices)  fsdp 8 x expert 64    18432 x 36           58.5   96 GB
(default: arguments 31.8 GB, temporaries 33.1 GB per chip.) The paper's batch 18144 = 32 x 567
allows at most 32 batch shards. TPU7x does not fit it: tensor 8 x expert 32 on tpu7x:4x4x8 aborts
inside libtpu 0.0.52's compiler; pipeline 2 x tensor 4 x expert 32 (4x4x8) and pipeline 4 x
tensor 4 x expert 32 (4x8x8) need 126 / 101 GB of temporaries. fsdp 8 x expert 64 fits once the
global batch is divisible by 512 (18432 = 512 x 36 microbatches, +1.6% tokens per step). The :tpu7x
row is the full 18432 x 36 step (arguments 15.8 GB, temporaries 42.6 GB; the gradient accumulator
adds 6.5 GB over the 52.0 GB measured at 512 x 1); the :v5p_512 row was measured at 512 x 1.
The 32K/128K phases need context parallelism (not done): train them on a mesh that fits their
batch (e.g. --config.mesh... overrides) or stop after pretrain_4k with --max_steps.
"""

from ling_jax.config import get_preset
from ling_jax.parallel.mesh import mesh_block
from ling_jax.train.experiment import fit_long_phases, paper_pretrain

# variant: (aot topology, mesh fields, 4K batch, 4K microbatches); tables above.
VARIANTS = {
    "v5p": ("v5p:4x8x8", dict(context=8, expert=32), 18144, 63),
    "v5p_512": ("v5p:8x8x8", dict(context=8, expert=64), 18432, 36),
    "tpu7x": ("tpu7x:4x8x8", dict(context=8, expert=64), 18432, 36),
}


def get_config(variant: str = "v5p"):
    if variant not in VARIANTS:
        raise ValueError(f"ling_1t_pretrain.py:{variant}: unknown variant; use one of "
                         f"{sorted(VARIANTS)}")
    topology, mesh, batch, microbatches = VARIANTS[variant]
    cfg = paper_pretrain(get_preset("ling_1t"), peak_lr=1.86e-4, batch_4k=18144)
    cfg.model.moe_backend = "ep_ragged_all_to_all"  # expert parallelism; "ep_all_to_all" on CPU/GPU
    cfg.model.attention_backend = "splash"  # Pallas TPU kernel; "tiled" on CPU/GPU
    cfg.model.remat_policy = "full"
    cfg.mesh = mesh_block(**mesh, rules="fsdp_ep", capacity_factor=1.25,
                          ep_local_backend="ragged_dot")
    # 4K: batch = batch shards × microbatches × sequences per shard per microbatch.
    cfg.phases.pretrain_4k.batch_size = batch
    cfg.phases.pretrain_4k.microbatches = microbatches
    # 32K/128K: one sequence per batch shard (data × fsdp × expert) per microbatch, split over
    # the context axis; the 4K phase's tokens per step, rounded to whole sequences per shard.
    fit_long_phases(cfg, batch_shards=mesh["expert"], tokens_per_step=batch * 4096)
    cfg.aot = dict(topology=topology, num_slices=1)
    return cfg
