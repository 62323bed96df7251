"""Scale-out: mesh (mesh.py), logical→mesh rules (rules.py), train-state shardings and the sharded
step (sharding.py), the circular pipeline (pipeline.py) and ahead-of-time TPU compiles (aot.py).
Expert-parallel dispatch lives in ling_jax/ops/ep_transport.py (a registered MoE backend)."""
