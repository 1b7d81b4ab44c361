"""`python -m ichbench`: the command line.

May import: cli.
"""
import sys

from .cli import main

if __name__ == "__main__":  # guarded: worker processes started with "spawn" import this module
    sys.exit(main())
