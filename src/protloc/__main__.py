import sys

from protloc.cli import run

sys.exit(run())
