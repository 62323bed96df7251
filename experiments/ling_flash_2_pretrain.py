"""ling_flash_2: the paper's pre-training recipe (reference §6; peak LR 2.61e-4, 8352 x 4K sequences).

4K context at θ 1e4 (20T tokens) → 32K context extension at θ 6e5 (150B, bias rate 1e-4) →
reasoning mid-training at 32K (600B) → 128K with YaRN (factor 4). AdamW 0.9/0.95, wd 0.1, clip 1.0,
init std 0.006, WSM (2,000 warmup steps, then constant; merge with ling-jax merge-checkpoints).

Every phase runs on context 8 x expert 4 of v5p:2x4x4 (32 chips): 4K 8352 x 261 (8 sequences per
batch shard per microbatch), 32K 1044 x 261, 128K 260 x 65 (261 -> 260 sequences: 4 batch shards);
the loss runs over 8 token chunks at 128K. Measured 2026-12-06 (`ling-jax aot --config
experiments/ling_flash_2_pretrain.py --phase P --json`; libtpu 0.0.52, per-chip bytes from XLA,
remat full, splash attention, EP ragged all-to-all, capacity 1.25; collective bytes per device per
step from the optimized HLO, loops multiplied out; estimate at v5p's 459 TFLOP/s, 1.2 TB/s ICI):
    phase        batch x mb   args   temp   peak (GB of 95)  compute  collectives (wire/device)
    pretrain_4k   8352 x 261  26.6   27.4   54.1             96 s     55.0 TB -> 46 s
    context_32k   1044 x 261  26.6   27.6   54.3            150 s     51.5 TB -> 43 s
    yarn_128k      260 x 65   26.6   41.4   68.1            335 s     24.5 TB -> 20 s
(4K/32K collectives: all-gather ~27 TB, reduce-scatter ~12, ragged all-to-all 11.5: the ZeRO-3
weight traffic of 261 small microbatches.) Earlier 4K on fsdp 8 x expert 4 (same per-chip
arguments): v5p:2x4x4 peak 57.8 GB; tpu7x:2x2x4 (16 chips, 32 devices) 62.9 of 96 GB per device.
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
