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
step, splash attention (Mosaic), K/V all-gathered, EP ragged all-to-all, capacity 1.25; collective
bytes per device per step from XLA's optimized-HLO dump, loops multiplied out; compile times on a
shared 2-core host). Since 2026-12-06 with the three long-context memory settings of this file:
loss over 8 token chunks, remat offload_layer_inputs (layer inputs in host memory), ragged_dot
backward in bf16:
    default v5p:4x8x8 (GB per chip of 95; estimate per step on v5p, 459 TFLOP/s, 1.2 TB/s ICI)
    phase        batch x mb   args   temp   peak  fits  compute  collectives (wire/device)
    pretrain_4k  18144 x 63   31.7   32.7   64.6  yes   207 s    82.1 TB -> 68 s
    context_32k   2272 x 71   31.7   31.5   63.4  yes   280 s    74.9 TB -> 62 s
    yarn_128k      576 x 18   31.7   60.9   92.9  yes   535 s    36.7 TB -> 31 s
    4K collectives: all-reduce 41.0 TB, all-gather 21.3, ragged all-to-all 19.4, reduce-scatter
    0.3: gradients are all-reduced inside the microbatch loop (each microbatch, each layer), which
    a sharded accumulation reduced once per step would cut (not done).
    Before these settings: context_32k peak 69.2 GB; yarn_128k did NOT fit (temporaries 104.2 >
    95.7 GB); loss chunks alone 96.4; + offload_layer_inputs 67.2 temp / 99.1 peak (the 80 layer
    inputs, 21.5 GB, moved to host); + bf16 ragged_dot backward 60.9 / 92.9 (the fp32 [163840,
    8192] cotangents of the expert matmuls were the largest live buffers: 5.4 GB each).
    Earlier (2026-12-05, remat full, no loss chunks): :tpu7x context_32k 2304 x 36 peak 51.9 of
    96 GB per device; yarn_128k with --config.mesh.context=16 --config.mesh.expert=32 peak 74.3;
    v5p yarn_128k on context 16 x expert 16 (576 x 36) peak 87.9. Not re-measured with the new
    settings: the tpu7x and v5p_512 variants.
Earlier 4K measurements on the previous meshes (libtpu 0.0.52; tensor 8 x expert 32 at 18144 x 567:
peak 65.0 GB, arguments 31.8, temporaries 33.1; fsdp 8 x expert 64 at 18432 x 36: v5p 46.9 GB,
tpu7x 58.5 GB).
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
    cfg.mesh = mesh_block(**mesh, rules="fsdp_ep", capacity_factor=1.25,
                          ep_local_backend="ragged_dot")
    # 4K: batch = batch shards × microbatches × sequences per shard per microbatch.
    cfg.phases.pretrain_4k.batch_size = batch
    cfg.phases.pretrain_4k.microbatches = microbatches
    # 32K/128K: one sequence per batch shard (data × fsdp × expert) per microbatch, split over
    # the context axis; the 4K phase's tokens per step, rounded to whole sequences per shard.
    fit_long_phases(cfg, batch_shards=mesh["expert"], tokens_per_step=batch * 4096)
    # At 128K the LM and MTP losses run over 8 token chunks: fp32 [tokens, 157K] logits and their
    # gradient (10 GB each at 16K tokens per chip, twice with MTP) live 1/8 at a time. Only there:
    # each chunk all-reduces the head's gradient, which at 4K added 15.5 TB per step.
    cfg.phases.yarn_128k.loss_chunks = 8
    cfg.aot = dict(topology=topology, num_slices=1)
    return cfg
