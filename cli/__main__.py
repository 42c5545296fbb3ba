"""``python -m cli ...``: the ``cme-ser`` command without its console script."""

import sys

from cli.main import main

# Guarded: worker processes started by "spawn" (experiments.units' pool) import this module
# again as __mp_main__, and must not run the command a second time.
if __name__ == "__main__":
    sys.exit(main())
