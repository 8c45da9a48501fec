"""`python -m qw`: the same entry point as the `qw` console script."""

import sys

from qw.cli import main

if __name__ == "__main__":
    sys.exit(main())
