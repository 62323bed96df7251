"""PyTorch/transformers code for BailingMoeV2, copied beside every `export-hf` directory.

The two modules here import only torch and transformers (never ling_jax): `export-hf` copies them
next to the weights and `config.json`'s `auto_map` names them, so an export loads offline with
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`. This file imports nothing.
"""
