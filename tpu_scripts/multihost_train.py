#!/usr/bin/env python3
"""`ling-jax train` on one host of a multi-host TPU slice: jax.distributed first, then the CLI.

Run the same command on every host (tpu_scripts/tpu.py train does, through gcloud ssh
--worker=all). On Cloud TPU VMs jax.distributed.initialize() finds the coordinator, the process
count and this process's id from the TPU metadata; after it, jax.devices() lists the devices of
all hosts and the train loop shards the batch and the state over the mesh of the experiment.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    import jax

    jax.distributed.initialize()
    print(f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local / {jax.device_count()} devices", flush=True)
    from ling_jax.cli.main import run

    sys.argv = ["ling-jax", "train", *argv]
    run()


if __name__ == "__main__":
    main(sys.argv[1:])
