"""One style: the committed formatter configuration (pyproject.toml) holds for the whole tree, and
the linter (pyflakes and pycodestyle's errors, 100 columns) finds nothing."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

RUFF = shutil.which("ruff")
pytestmark = pytest.mark.skipif(
  RUFF is None, reason="ruff is not installed (pip install -e .[test])"
)


def test_formatter_check_passes():
  done = subprocess.run(
    [RUFF, "format", "--check", "."], cwd=REPO_ROOT, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_linter_finds_nothing():
  done = subprocess.run([RUFF, "check", "."], cwd=REPO_ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
