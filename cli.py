"""`python cli.py ...` does what the installed `sqa-nas` command does."""

import sys

from sqa_nas.cli import main

if __name__ == "__main__":
    sys.exit(main())
