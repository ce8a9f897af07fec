"""``python -m traitlens.cli``: the same as the ``traitlens`` command (what ``torchrun -m`` needs)."""

import sys

from traitlens.cli import main

if __name__ == "__main__":
    sys.exit(main())
