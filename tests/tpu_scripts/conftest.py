"""tpu_scripts/ is a folder of scripts (no package): put it on sys.path like `python tpu_scripts/X.py`."""

import pathlib
import sys

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "tpu_scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
