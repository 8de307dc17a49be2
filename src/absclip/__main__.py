"""``python -m absclip``: the same as the ``absclip`` command."""

import sys

from .cli import main

sys.exit(main())
