"""The embedded default: the tiny Ling 2.0 trained pretrain → midtrain on built-in data, on CPU.

Pretraining reads the Python standard library's own sources (present on every machine);
mid-training mixes in generated arithmetic word problems with step-by-step solutions (prompt
tokens loss-masked). Minutes on a 2-core CPU; `ling-jax train --config experiments/colab_tiny.py`.
"""

from __future__ import annotations

from ling_jax.config import get_preset
from ling_jax.train.experiment import checkpointing, experiment


def get_config():
    model = get_preset("tiny")
    pretrain = dict(
        kind="pretrain", steps=250, seq_len=256, batch_size=8,
        data=dict(sources=dict(python=dict(kind="builtin_python", split="train", weight=1.0))),
        lr=dict(kind="wsm", peak_lr=4e-3, warmup_steps=25), bias_update_rate=1e-3,
        z_loss=0.0)
    midtrain = dict(
        kind="midtrain", steps=150, seq_len=256, batch_size=8,
        data=dict(sources=dict(
            arithmetic=dict(kind="builtin_arithmetic", split="train", weight=0.7),
            python=dict(kind="builtin_python", split="train", weight=0.3))),
        lr=dict(kind="wsm", peak_lr=1.5e-3, warmup_steps=10), bias_update_rate=1e-4)
    return experiment(
        model, tokenizer=dict(kind="builtin", vocab_size=2048, cache_dir=""),
        phases=[("pretrain", pretrain), ("midtrain", midtrain)],
        checkpoint=checkpointing(every_steps=100, keep=2),
        sample_prompt=("Question: Farah has 5 stamps. Then Farah finds 14 more. Then the pile grows to 2 "
                       "times its size. How many stamps does Farah have now?\nAnswer:\n"))  # held out
