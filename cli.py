"""Launcher for a checkout: ``python cli.py ...`` is the same as ``adtr-edge ...``."""

import sys

from adtr_edge.cli import main

if __name__ == "__main__":
    sys.exit(main())
