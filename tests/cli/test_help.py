"""`ling-jax SUB --help` lists that subcommand's own flags (absl's generic --help lists
`__main__`'s, which for the console script are none)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from ling_jax.cli.main import SUBCOMMANDS
from tests.reliability.hostile import cli

_DEFINE = re.compile(r"""(?:DEFINE_\w+|DEFINE_path|DEFINE_config_file)\(\s*["'](\w+)["']""")


def _defined_flags(module: str) -> set[str]:
    from tests.reliability.hostile import REPO

    return set(_DEFINE.findall((REPO / "ling_jax" / "cli" / f"{module}.py").read_text()))


def test_every_subcommand_help_lists_its_own_flags():
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(SUBCOMMANDS, pool.map(lambda c: cli(c, "--help", timeout=60),
                                                 SUBCOMMANDS), strict=True))
    for command, module in SUBCOMMANDS.items():
        result = results[command]
        assert result.returncode == 0, result.stderr[-2000:]
        out = result.stdout
        assert out.startswith(f"usage: ling-jax {command} [--flags]"), out[:200]
        assert "Try --helpfull" not in out
        own = _defined_flags(module)
        assert own, module
        for name in own:
            assert f"\n  --{name}" in out, (command, name)
    assert '"--config.phases.rl.rl.stages[0].steps=1"' in results["train"].stdout
    assert "--logtostderr" not in results["train"].stdout  # absl's flags: --helpfull
