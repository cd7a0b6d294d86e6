import sys

from protloc.cli import main

sys.exit(main())
