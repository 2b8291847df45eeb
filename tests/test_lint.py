"""The code base stays ruff-clean (the one linter, configured in pyproject.toml), so `make test` catches it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    paths = ["attn_course", "kernels", "tests", "benchmarks", "autograder", "book"]
    proc = subprocess.run([str(ruff), "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
