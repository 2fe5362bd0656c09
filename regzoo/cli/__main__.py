"""``python -m regzoo.cli``: the same as the ``regzoo`` command."""

import sys

from regzoo.cli import main

sys.exit(main())
