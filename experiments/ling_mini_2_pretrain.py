"""ling_mini_2: the paper's pre-training recipe (reference §6; peak LR 3.36e-4, 4400 x 4K sequences).

4K context at θ 1e4 (20T tokens) → 32K context extension at θ 6e5 (150B, bias rate 1e-4) →
reasoning mid-training at 32K (600B) → 128K with YaRN (factor 4). AdamW 0.9/0.95, wd 0.1, clip 1.0,
init std 0.006, WSM (2,000 warmup steps, then constant; merge with ling-jax merge-checkpoints).

Every phase runs on context 4 x expert 4 of v5p:2x2x4 (16 chips): 4K 4400 x 275 (4 sequences per
batch shard per microbatch), 32K 552 x 138, 128K 136 x 34 (550 -> 552, 137.5 -> 136 sequences: 4
batch shards); the loss runs over 8 token chunks at 128K. Measured 2026-12-06 (`ling-jax aot
--config experiments/ling_mini_2_pretrain.py --phase P --json`; libtpu 0.0.52, per-chip bytes from
XLA, remat full, splash attention, EP ragged all-to-all, capacity 1.25; collective bytes per device
per step from the optimized HLO, loops multiplied out; estimate at v5p's 459 TFLOP/s, 1.2 TB/s ICI):
    phase        batch x mb   args   temp   peak (GB of 95)  compute  collectives (wire/device)
    pretrain_4k   4400 x 275   8.6   12.1   20.9             24 s     11.5 TB -> 10 s
    context_32k    552 x 138   8.6   20.9   29.7             43 s      7.5 TB ->  6 s
    yarn_128k      136 x 34    8.6   28.4   37.1            104 s      5.7 TB ->  5 s
Earlier 4K on fsdp 4 x expert 4 (same per-chip arguments): v5p:2x2x4 peak 22.3 GB; tpu7x:2x2x2
(8 chips, 16 devices) 24.3 of 96 GB per device.
"""

from ling_jax.config import get_preset
from ling_jax.parallel.mesh import mesh_block
from ling_jax.train.experiment import fit_long_phases, paper_pretrain


def get_config():
    cfg = paper_pretrain(get_preset("ling_mini_2"), peak_lr=3.36e-4, batch_4k=4400)
    # 4K: 4400 = 4 batch shards × 275 microbatches × 4 sequences, each split over context 4.
    cfg.model.moe_backend = "ep_ragged_all_to_all"  # expert parallelism; "ep_all_to_all" on CPU/GPU
    cfg.model.attention_backend = "splash"  # Pallas TPU kernel; "tiled" on CPU/GPU
    cfg.model.remat_policy = "full"
    cfg.mesh = mesh_block(context=4, expert=4, rules="fsdp_ep", capacity_factor=1.25,
                          ep_local_backend="ragged_dot")
    cfg.phases.pretrain_4k.microbatches = 275
    fit_long_phases(cfg, batch_shards=4, tokens_per_step=cfg.phases.pretrain_4k.batch_size * 4096)
    cfg.phases.yarn_128k.loss_chunks = 8  # 128K: the loss over 8 token chunks (as Ling-1T)
    cfg.aot = dict(topology="v5p:2x2x4", num_slices=1)
    return cfg
