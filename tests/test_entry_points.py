"""`sqa-nas`, `python -m sqa_nas` and `python cli.py` are one program."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqa_nas

ROOT = Path(__file__).resolve().parents[1]


def test_every_entry_point_runs_the_same_program():
    expected = f"sqa-nas {sqa_nas.__version__}"
    for argv in ([sys.executable, "-m", "sqa_nas"], [sys.executable, "cli.py"]):
        out = subprocess.run(
            [*argv, "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0 and out.stdout.strip() == expected, (argv, out.stderr)
        bad = subprocess.run(
            [*argv, "nosuchcommand"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert bad.returncode == 2 and "invalid choice: 'nosuchcommand'" in bad.stderr
