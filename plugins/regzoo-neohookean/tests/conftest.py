"""Make the plugin importable from a source checkout (``pytest plugins/regzoo-neohookean``)."""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
