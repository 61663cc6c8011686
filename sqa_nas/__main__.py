"""`python -m sqa_nas ...` runs the same program as `sqa-nas` and `python cli.py`."""

import sys

from sqa_nas.cli import main

if __name__ == "__main__":
    sys.exit(main())
