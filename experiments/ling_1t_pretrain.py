"""ling_1t: the paper's pre-training recipe (reference §6; peak LR 1.86e-4, 18144 x 4K sequences).

4K context at θ 1e4 (20T tokens) → 32K context extension at θ 6e5 (150B, bias rate 1e-4) →
reasoning mid-training at 32K (600B) → 128K with YaRN (factor 4). AdamW 0.9/0.95, wd 0.1, clip 1.0,
init std 0.006, WSM (2,000 warmup steps, then constant; merge with ling-jax merge-checkpoints).

Meshes (all phases run on one mesh; `ling-jax aot --config experiments/ling_1t_pretrain.py[:V]
--phase P --json` compiles a phase for the variant's topology and prints memory, FLOPs, collective
bytes and a step-time estimate):
    variant     topology                   mesh                   4K          32K        128K
    (default)   v5p:4x8x8  (256 chips)     context 8 x expert 32  18144 x 63  2272 x 71  576 x 18
    :v5p_512    v5p:8x8x8  (512 chips)     context 8 x expert 64  18432 x 36  2304 x 36  576 x 9
    :tpu7x      tpu7x:4x8x8 (512 devices)  context 8 x expert 64  18432 x 36  2304 x 36  576 x 9
(batch x microbatches.) The context axis splits every sequence in 8 (zig-zag order, K/V gathered in
attention) and ZeRO-shards weights like fsdp, so each chip holds 4.6K (4K phase, 9 sequences per
batch shard per microbatch), 4K (32K) or 16K (128K) tokens per microbatch. 4K needs 63 microbatches
(was 567 on tensor 8 x expert 32). The long phases keep the 4K phase's tokens per step in whole
sequences per batch shard (`fit_long_phases`): 2268 → 2272 x 32K (+0.2%), 567 → 576 x 128K (+1.6%),
since 2268 and 567 are not divisible by 32 batch shards.
Measured (`ling-jax aot`, libtpu 0.0.52, per-chip bytes from XLA's memory analysis, full 80-layer
step, remat full, splash attention (Mosaic), K/V all-gathered, EP ragged all-to-all, capacity 1.25;
collective bytes per device per step from XLA's optimized-HLO dump; compile times on a shared
2-core host with other compiles running):
    default v5p:4x8x8 context_32k 2272 x 71: arguments 31.7, temporaries 37.3, peak 69.2 of 95 GB
    (fits; 66.4 in an earlier build, difference not attributed); compile 1507 s (3022 s before
    splash kernels were cached); XLA 1.26e14 FLOP/device (loop bodies once), model 1.28e17
    FLOP/device per step → compute-bound estimate 280 s per step on v5p (459 TFLOP/s);
    collectives 52.1 GB/device/step (all-reduce 43.2, ragged all-to-all 5.9, all-gather 2.9).
    default v5p:4x8x8 yarn_128k 576 x 18: does NOT fit: compile-time HBM OOM, temporaries
    104.2 GB > 95.7 GB (16K tokens per chip per microbatch); compile 963 s.
    v5p:4x8x8 yarn_128k with --config.mesh.context=16 --config.mesh.expert=16
    --config.phases.yarn_128k.microbatches=36 (576 x 36, 8K tokens per chip): arguments 31.7,
    temporaries 56.0, peak 87.9 of 95 GB (fits); compile 624 s; model 2.46e17 FLOP/device per
    step → estimate 535 s per step; collectives 67.4 GB/device/step. (4K/32K phases not compiled
    on this mesh.)
    :tpu7x tpu7x:4x8x8 context_32k 2304 x 36: arguments 15.8, temporaries 35.9, peak 51.9 of 96 GB
    per device (fits); compile 741-920 s; model 6.51e16 FLOP/device per step → estimate 56 s per
    step; collectives 49.6 GB/device/step (all-reduce 37.8, ragged all-to-all 6.0, reduce-scatter
    3.8, all-gather 1.8).
    :tpu7x yarn_128k with --config.mesh.context=16 --config.mesh.expert=32
    --config.phases.yarn_128k.microbatches=18 (576 x 18): arguments 15.8, temporaries 58.4, peak
    74.3 of 96 GB per device (fits); compile 984 s; model 1.23e17 FLOP/device per step → estimate
    106 s per step; collectives 61.1 GB/device/step.
Not measured: the v5p_512 variant, the 4K phase on the context meshes, tpu7x yarn_128k on the
default mesh (context 8 x expert 64), the ring exchange (mesh.context_exchange='ring' runs the
`tiled` kernels; splash needs all_gather) on the Ling-1T meshes.
Earlier 4K measurements on the previous meshes (libtpu 0.0.52; tensor 8 x expert 32 at 18144 x 567:
peak 65.0 GB, arguments 31.8, temporaries 33.1; fsdp 8 x expert 64 at 18432 x 36: v5p 46.9 GB,
tpu7x 58.5 GB) are not repeated for the context meshes yet.
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
    # Recompute every layer in the backward, its input kept in host memory (21 GB per chip at
    # 128K: 80 layers x 16K tokens x 8192 x bf16).
    cfg.model.remat_policy = "offload_layer_inputs"
    # The LM and MTP losses run over 8 token chunks: fp32 [tokens, 157K] logits and their gradient
    # (10 GB each at 16K tokens per chip, twice with MTP) live 1/8 at a time.
    cfg.model.loss_chunks = 8
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
