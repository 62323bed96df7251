"""Launching runs: ahead-of-time compiles of an experiment's train step for a TPU topology (aot.py).

Sits above train/ and rl/ (it compiles their steps) and below the CLI (`ling-jax aot`)."""
