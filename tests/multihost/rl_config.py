"""The RL tests' small experiment (pretrain, then rl) on a data=4 mesh, as a config file."""

from tests.rl.rl_fixtures import rl_experiment


def get_config():
    cfg = rl_experiment()
    cfg.mesh.data = 4
    return cfg
