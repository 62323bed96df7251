"""The loop tests' small experiment on a data=4 mesh, as a config file for `ling-jax train`."""

from tests.train.experiment_fixtures import small_experiment


def get_config():
    cfg = small_experiment(pretrain_steps=3, midtrain_steps=3, every=2)
    cfg.mesh.data = 4
    return cfg
