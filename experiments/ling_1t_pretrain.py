"""ling_1t: the paper's pre-training recipe (reference §6; peak LR 1.86e-4, 18144 x 4K sequences).

4K context at θ 1e4 (20T tokens) → 32K context extension at θ 6e5 (150B, bias rate 1e-4) →
reasoning mid-training at 32K (600B) → 128K with YaRN (factor 4). AdamW 0.9/0.95, wd 0.1, clip 1.0,
init std 0.006, WSM (2,000 warmup steps, then constant; merge with ling-jax merge-checkpoints).

Scale-out of the 4K phase (`ling-jax aot --config experiments/ling_1t_pretrain.py [--topology
T]`; libtpu 0.0.52, per-device memory from XLA, remat full, EP ragged all-to-all, capacity 1.25):
    topology                     mesh                batch x microbatches  args   temp   peak    HBM
    v5p:4x8x8   (256 chips)      tensor 8 x expert 32  18144 x 567         31.8   33.1   65.0 GB  95
18144 = 32 x 567 allows at most 32 batch shards. TPU7x with this batch: tensor 8 x expert 32 on
tpu7x:4x4x8 aborts inside libtpu 0.0.52's compiler; pipeline 2 x tensor 4 x expert 32 (4x4x8) and
pipeline 4 x tensor 4 x expert 32 (4x8x8) need 126 / 101 GB of temporaries. A batch divisible
by 512 (e.g. 18432 = 512 x 36 microbatches) allows fsdp 8 x expert 64, measured at batch 512 x 1:
v5p:8x8x8 46.9 GB, tpu7x:4x8x8 (512 devices) 52.0 GB peak.
The 32K/128K phases need context parallelism (not done).
"""

from ling_jax.config import get_preset
from ling_jax.parallel.mesh import mesh_block
from ling_jax.train.experiment import paper_pretrain


def get_config():
    cfg = paper_pretrain(get_preset("ling_1t"), peak_lr=1.86e-4, batch_4k=18144)
    # 4K phase on the mesh (check with `ling-jax aot`; its memory table is not recorded yet):
    # 18144 = 32 batch shards
    # × 567 microbatches of one sequence per device.
    cfg.model.moe_backend = "ep_ragged_all_to_all"  # expert parallelism; "ep_all_to_all" on CPU/GPU
    cfg.model.remat_policy = "full"
    cfg.mesh = mesh_block(tensor=8, expert=32, rules="fsdp_ep", capacity_factor=1.25,
                          ep_local_backend="ragged_dot")
    cfg.phases.pretrain_4k.microbatches = 567
    cfg.aot = dict(topology="v5p:4x8x8", num_slices=1)
    return cfg
