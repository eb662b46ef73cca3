"""``python -m contrastlab``: the same as the ``contrastlab`` command (used by torchrun)."""

import sys

from contrastlab.cli import main

sys.exit(main())
