"""A very small experiment shared by the loop tests (one compiled step per phase kind)."""

from ling_jax.config import get_preset
from ling_jax.train.experiment import checkpointing, experiment


def small_experiment(*, pretrain_steps=4, midtrain_steps=3, every=2, microbatches=1):
    model = get_preset("tiny")
    model.update(dict(hidden_size=64, num_hidden_layers=2, first_k_dense_replace=1,
                      intermediate_size=128, num_experts=8, num_experts_per_tok=2, n_group=2,
                      topk_group=1, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=2048))
    data = dict(sources=dict(python=dict(kind="builtin_python", split="train", max_files=40)))
    pretrain = dict(kind="pretrain", steps=pretrain_steps, seq_len=32, batch_size=4,
                    microbatches=microbatches, data=data,
                    lr=dict(kind="wsm", peak_lr=3e-3, warmup_steps=1))
    midtrain = dict(kind="midtrain", steps=midtrain_steps, seq_len=32, batch_size=4,
                    data=dict(sources=dict(math=dict(kind="builtin_arithmetic", num_docs=200))),
                    lr=dict(kind="wsm", peak_lr=1e-3, warmup_steps=1), bias_update_rate=1e-4,
                    z_loss=1e-3)
    return experiment(model, tokenizer=dict(kind="builtin", vocab_size=2048, cache_dir=""),
                      phases=[("pretrain", pretrain), ("midtrain", midtrain)],
                      checkpoint=checkpointing(every_steps=every, keep=2))
