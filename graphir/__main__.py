"""`python -m graphir ...`: the `graphir` command (tools/cli.py)."""

import sys

from graphir.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
