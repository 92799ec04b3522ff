"""``python -m autotune`` is the ``mlstm-tune`` command."""

import sys

from .cli import main

sys.exit(main())
