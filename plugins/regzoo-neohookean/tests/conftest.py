"""Make the plugin importable from a source checkout (``pytest plugins/regzoo-neohookean``), and
opt in to regzoo's pytest fixture ``regularizer_contract`` (regzoo loads no pytest plugin by
itself; a top-level ``conftest.py`` may say ``pytest_plugins = ["regzoo.testing.plugin"]``)."""

import sys
from pathlib import Path

from regzoo.testing.plugin import regularizer_contract

__all__ = ["regularizer_contract"]

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
