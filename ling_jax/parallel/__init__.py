"""Scale-out: mesh (mesh.py), logical→mesh rules (rules.py), train-state shardings and the sharded
step (sharding.py) and the circular pipeline (pipeline.py); ahead-of-time TPU compiles of the train
step live above train/, in ling_jax/launch/aot.py.
Expert-parallel dispatch lives in ling_jax/ops/ep_transport.py (a registered MoE backend)."""
