"""End to end: `python launch/train.py --config=configs/digits.py:tiny` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "launch/train.py", *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One tiny digits run; train.steps overridden from the command line (tiny's default is 30)."""
  workdir = str(tmp_path_factory.mktemp("cli") / "run")
  proc = run_cli(
    "--config=configs/digits.py:tiny", f"--workdir={workdir}", "--config.train.steps=20"
  )
  return proc, workdir


def test_cli_trains_evaluates_and_reports(tiny_run):
  proc, workdir = tiny_run
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert os.path.isfile(os.path.join(workdir, "report.json"))
  assert os.path.isfile(os.path.join(workdir, "report.md"))
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  rows = report["rows"]
  image_audio = [r for r in rows if r["query"] == "image" and r["gallery"] == "audio"]
  assert image_audio, [(r["query"], r["gallery"]) for r in rows]
  assert all(isinstance(r["mAP"], float) and 0.0 <= r["mAP"] <= 1.0 for r in image_audio)
  # a directly paired route is well above the ~0.1 class base rate of 10 balanced digits
  image_text = [r for r in rows if r["query"] == "image" and r["gallery"] == "text"]
  assert image_text and max(r["mAP"] for r in image_text) > 0.2
  with open(os.path.join(workdir, "report.md")) as f:
    markdown = f.read()
  assert "image" in markdown and "audio" in markdown and "|" in markdown


def test_cli_prints_progress_and_honours_overrides(tiny_run):
  proc, workdir = tiny_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  progress = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
  assert progress, proc.stdout[-3000:]
  assert any(line.startswith("step 20/20") for line in progress)
  assert not any("/30" in line for line in progress)  # the tiny default of 30 steps was overridden
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps[-1] == 20


def test_cli_rejects_unknown_config_key(tmp_path):
  workdir = str(tmp_path / "run")
  proc = run_cli(
    "--config=configs/digits.py:tiny",
    f"--workdir={workdir}",
    "--config.train.nonexistent=1",
    timeout=120,
  )
  assert proc.returncode != 0
  assert "nonexistent" in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "report.json"))


def test_cli_rejects_unknown_variant(tmp_path):
  proc = run_cli("--config=configs/digits.py:huge", f"--workdir={tmp_path}", timeout=120)
  assert proc.returncode != 0
  assert "unknown variant 'huge'" in proc.stderr


def test_help_into_a_closed_pipe_exits_quietly():
  """`graphbridge-train --help | head -1`: the reader closes the pipe; no BrokenPipeError
  traceback."""
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  read, write = os.pipe()
  os.close(read)  # nobody reads: the first write breaks the pipe
  proc = subprocess.run(
    [sys.executable, os.path.join(root, "launch", "train.py"), "--help"],
    stdout=write,
    stderr=subprocess.PIPE,
    text=True,
    timeout=120,
  )
  os.close(write)
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
