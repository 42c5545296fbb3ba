"""``python -m cli ...``: the ``cme-ser`` command without its console script."""

import sys

from cli.main import main

sys.exit(main())
