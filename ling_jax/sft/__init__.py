"""The `sft` phase kind: supervised fine-tuning on chat conversations (assistant turns trained),
with tool-call evaluation before and after (found by train/phase_kinds.py by module path)."""
