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
Measured 2026-12-06 (`ling-jax aot`, libtpu 0.0.52, per-chip bytes from XLA's memory analysis,
full 80-layer step, splash attention (Mosaic), K/V all-gathered, EP ragged all-to-all, capacity
1.25, remat offload_layer_inputs, ragged_dot backward in bf16, loss over 8 token chunks at 128K
only; collective bytes per device per step from XLA's optimized HLO, loops multiplied out,
libtpu's reduce-scatters counted as such; compile times on a shared 2-core host). Estimates from
published figures: v5p 459 TFLOP/s and 1.2 TB/s ICI per chip; tpu7x 2,307 TFLOP/s per chip (two
devices). GB per chip (per device on tpu7x):
    variant  phase        batch x mb   args   temp   peak  of   compute  collectives (wire/device)
    v5p      pretrain_4k  18144 x 63   31.7   38.8   70.7  95   207 s    64.1 TB -> 53 s
    v5p      context_32k   2272 x 71   31.7   37.0   68.9  95   280 s    54.4 TB -> 45 s
    v5p      yarn_128k      576 x 18   31.7   60.9   92.9  95   535 s    35.4 TB -> 29 s
    tpu7x    pretrain_4k  18432 x 36   15.8   40.5   56.4  96    42 s    28.4 TB -> 47 s (MFU <= 88%)
    tpu7x    context_32k   2304 x 36   15.8   34.9   50.9  96    56 s    25.8 TB -> 43 s
    tpu7x    yarn_128k      576 x 9    15.8   56.6   72.6  96   106 s    17.7 TB -> 29 s
v5p_512 was not re-measured on the context mesh (its 4K on fsdp 8 x expert 64: 46.9 GB).
On v5p every phase is compute-bound on paper; tpu7x's 4K step is collective-bound (ragged
all-to-all 10.0 TB, all-reduce 9.4). Of v5p 4K's 19.7 TB of all-reduce, 10.9 TB are weight
all-gathers that libtpu runs as all-reduce of a zero-padded buffer: a 256-way shard of the embed dim
(32 rows) is narrower than the 128-wide minor tile of the layout it picks; 1.6 TB are LM-head
gradients. The loss chunks are for 128K only: at 4K they all-reduced the head's gradient once per
chunk (4K collectives 78.7 TB, of which 16.2 TB head gradients; peak 64.6 GB instead of 70.7).
What made 128K fit (buffer assignment at the peak): the loss chunks (temporaries 104.2 -> 96.4 GB),
offload_layer_inputs (the 80 layer inputs, 21.5 GB, in host memory: 67.2 temp / 99.1 peak), bf16
ragged_dot backward (fp32 [163840, 8192] cotangents of the expert matmuls were the largest live
buffers, 5.4 GB each: 60.9 / 92.9). tpu7x 128K needed context 16 x expert 32 before (74.3 GB).
Earlier 4K measurements on the previous meshes (tensor 8 x expert 32 at 18144 x 567: peak 65.0 GB;
fsdp 8 x expert 64 at 18432 x 36: v5p 46.9 GB, tpu7x 58.5 GB).
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
