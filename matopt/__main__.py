"""``python -m matopt`` is the ``matopt`` command."""

import sys

from matopt.cli import main

sys.exit(main())
