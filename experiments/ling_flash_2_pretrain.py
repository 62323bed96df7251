"""ling_flash_2: the paper's pre-training recipe (reference §6; peak LR 2.61e-4, 8352 x 4K sequences).

4K context at θ 1e4 (20T tokens) → 32K context extension at θ 6e5 (150B, bias rate 1e-4) →
reasoning mid-training at 32K (600B) → 128K with YaRN (factor 4). AdamW 0.9/0.95, wd 0.1, clip 1.0,
init std 0.006, WSM (2,000 warmup steps, then constant; merge with ling-jax merge-checkpoints).

Scale-out of the 4K phase (`ling-jax aot --config experiments/ling_flash_2_pretrain.py [--topology
T]`; libtpu 0.0.52, per-device memory from XLA, remat full, EP ragged all-to-all, capacity 1.25):
    topology                     mesh               batch x microbatches  args   temp   peak    HBM
    v5p:2x4x4   (32 chips)       fsdp 8 x expert 4  8352 x 261            26.6   31.1   57.8 GB  95
    tpu7x:2x2x4 (16 chips, 32 d) fsdp 8 x expert 4  8352 x 261            26.6   36.2   62.9 GB  96
The table was measured on the previous fsdp x expert mesh. Every phase now runs on
context 8 x expert 4: 4K 8352 x 261 (8 sequences per batch shard per microbatch), 32K 1044 x 261,
128K 260 x 65 (261 → 260 sequences at 128K: 4 batch shards).
The context axis shards weights like fsdp did (same per-chip argument bytes); the context meshes'
peaks are not re-measured yet (`ling-jax aot --config experiments/ling_flash_2_pretrain.py --phase P`).
"""

from ling_jax.config import get_preset
from ling_jax.parallel.mesh import mesh_block
from ling_jax.train.experiment import fit_long_phases, paper_pretrain


def get_config():
    cfg = paper_pretrain(get_preset("ling_flash_2"), peak_lr=2.61e-4, batch_4k=8352)
    # 4K: 8352 = 4 batch shards × 261 microbatches × 8 sequences, each split over context 8.
    cfg.model.moe_backend = "ep_ragged_all_to_all"  # expert parallelism; "ep_all_to_all" on CPU/GPU
    cfg.model.attention_backend = "splash"  # Pallas TPU kernel; "tiled" on CPU/GPU
    cfg.model.remat_policy = "full"
    cfg.mesh = mesh_block(context=8, expert=4, rules="fsdp_ep", capacity_factor=1.25,
                          ep_local_backend="ragged_dot")
    cfg.phases.pretrain_4k.microbatches = 261
    fit_long_phases(cfg, batch_shards=4, tokens_per_step=cfg.phases.pretrain_4k.batch_size * 4096)
    cfg.phases.yarn_128k.loss_chunks = 8  # 128K: the loss over 8 token chunks (as Ling-1T)
    cfg.aot = dict(topology="v5p:2x4x4", num_slices=1)
    return cfg
