"""regzoo's pytest plugin, for plugin authors who opt in: the ``regularizer_contract`` fixture.

regzoo does not load it into every pytest run (no ``pytest11`` entry point); a project asks for
it in its top-level ``conftest.py``::

    pytest_plugins = ["regzoo.testing.plugin"]

or imports the fixture into any ``conftest.py``
(``from regzoo.testing.plugin import regularizer_contract``). The checks themselves need no
pytest: [`regzoo.testing.check_regularizer`][regzoo.testing.contract.check_regularizer].
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from regzoo.testing.contract import check_regularizer

__all__ = ["regularizer_contract"]


@pytest.fixture
def regularizer_contract() -> Callable[..., None]:
    """Pytest fixture returning [`check_regularizer`][regzoo.testing.contract.check_regularizer]."""
    return check_regularizer
