"""``python -m pymacvtap``: the same as the ``pymacvtap`` command."""

import sys

from pymacvtap.cli import main

sys.exit(main())
