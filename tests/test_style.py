"""One style: the committed formatter configuration (pyproject.toml) holds for the whole tree, and
the linter (pyflakes and pycodestyle's errors, 100 columns) finds nothing, and no module of the
package is over 600 lines."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

RUFF = shutil.which("ruff")
needs_ruff = pytest.mark.skipif(
  RUFF is None, reason="ruff is not installed (pip install -e .[test])"
)


@needs_ruff
def test_formatter_check_passes():
  done = subprocess.run(
    [RUFF, "format", "--check", "."], cwd=REPO_ROOT, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@needs_ruff
def test_linter_finds_nothing():
  done = subprocess.run([RUFF, "check", "."], cwd=REPO_ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


MAX_MODULE_LINES = 600


def test_no_module_over_600_lines():
  """One role per module: a module that outgrows 600 lines is split, not extended."""
  import os

  package = os.path.join(REPO_ROOT, "graphbridge")
  long = []
  for folder, _, files in os.walk(package):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        with open(path) as f:
          n = sum(1 for _ in f)
        if n > MAX_MODULE_LINES:
          long.append(f"{os.path.relpath(path, REPO_ROOT)}: {n} lines")
  assert not long, long
