"""``python -m sorter``: the same as the ``sorter`` command."""

import sys

from .cli import main

sys.exit(main())
