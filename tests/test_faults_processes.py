"""Faults that need a second process or a signal: the workdir lock when its file is deleted or
replaced, and Ctrl-C at a step and during a checkpoint write (docs/reliability.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from graphbridge.core import errors
from graphbridge.data import readers as readers_lib
from graphbridge.runs import experiment
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.training import lock as lock_lib
from graphbridge.training import trained as trained_lib
from graphbridge.training import trainer as trainer_lib
from graphbridge.training import writers as writers_lib
from tests.conftest import REPO_ROOT
from tests.test_faults import _holder, quiet, small_config, tree_digest

# ---- the lock survives its file --------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(data_path):
  return readers_lib.load(data_path)


@pytest.mark.parametrize("what", ["deleted", "replaced"])
def test_deleting_or_replacing_the_lock_file_lets_no_second_run_in(what, dataset, tmp_path):
  workdir = str(tmp_path / "run")
  holder = _holder(workdir)  # another process holds the workdir
  try:
    path = os.path.join(workdir, lock_lib.LOCK_FILE)
    os.remove(path)
    if what == "replaced":
      with open(path, "w") as f:
        f.write("")
    before = tree_digest(workdir)
    with pytest.raises(errors.WorkdirLockedError, match=rf"{workdir} is in use by"):
      trainer_lib.train(small_config(10), workdir, dataset=dataset, log=quiet)
    assert tree_digest(workdir) == before  # nothing written beside the holder
  finally:
    holder.kill()
    holder.wait()
  with lock_lib.WorkdirLock(workdir, "after", log=quiet):  # free once the holder is gone
    pass


def test_workdir_that_cannot_be_one_is_a_clear_error(tmp_path, data_path):
  locked_dir = tmp_path / "run"
  (locked_dir / lock_lib.LOCK_FILE).mkdir(parents=True)
  with pytest.raises(errors.WorkdirError, match=r"\.graphbridge\.lock is a directory, not "):
    lock_lib.WorkdirLock(str(locked_dir)).__enter__()
  a_file = tmp_path / "afile"
  a_file.write_text("x")
  with pytest.raises(errors.WorkdirError, match=r"afile is a file, not a directory"):
    lock_lib.WorkdirLock(str(a_file)).__enter__()
  with pytest.raises(errors.WorkdirError, match=r"a part of its path is a file"):
    lock_lib.WorkdirLock(str(a_file / "run")).__enter__()
  config = small_config(10)
  config.data.path = data_path
  with pytest.raises(errors.WorkdirError, match=r"the workdir is empty"):
    experiment.train_and_evaluate(config, "", log=quiet, plots=False)


# ---- Ctrl-C ------------------------------------------------------------------------------------


def _train_cli(data_path, workdir, env_extra=None):
  """launch/train.py on the tiny config of tests/reliability_worker.py, output read as it comes
  ([(seconds since start, line)])."""
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, **(env_extra or {})}
  env.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  )
  args = [
    "--config=configs/npz.py:tiny",
    f"--config.data.path={data_path}",
    f"--workdir={workdir}",
    "--config.train.steps=40",
    "--config.train.checkpoint_every=10",
    "--config.train.log_every=5",
    "--config.train.print_every=5",
    "--config.model.hidden=16,",
    "--config.data.batch_size=16",
    "--config.train.tensorboard=False",
    "--noplots",
  ]
  t0 = time.perf_counter()
  proc = subprocess.Popen(
    [sys.executable, os.path.join(REPO_ROOT, "launch", "train.py"), *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    cwd=REPO_ROOT,
    env=env,
  )
  lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
  proc.wait(timeout=300)
  return proc.returncode, lines


def _at(lines, text):
  return next(t for t, line in lines if text in line)


def test_ctrl_c_at_a_step_stops_with_130_saying_where_and_the_run_resumes(data_path, tmp_path):
  workdir = str(tmp_path / "run")
  rc, lines = _train_cli(data_path, workdir, {"GRAPHBRIDGE_INTERRUPT_AFTER_STEP": "25"})
  text = "\n".join(line for _, line in lines)
  assert rc == 130, text[-3000:]  # not swallowed, not a success
  assert lines[-1][1] == (
    "graphbridge-train: interrupted after step 25 of 40; the last checkpoint is step 20: the "
    "same command resumes from it"
  ), text[-2000:]
  assert "Traceback" not in text and "step 30/40" not in text
  assert not os.path.exists(os.path.join(workdir, "report.json"))
  rows = writers_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [5, 10, 15, 20, 25]
  assert trained_lib.load_trained(workdir).step == 20
  rc, lines = _train_cli(data_path, workdir)
  assert rc == 0 and any("resumed from checkpoint step 20" in line for _, line in lines)
  assert trained_lib.load_trained(workdir).step == 40


def test_ctrl_c_during_a_checkpoint_write_exits_promptly_and_keeps_every_saved_step(
  data_path, tmp_path
):
  workdir = str(tmp_path / "run")
  rc, lines = _train_cli(data_path, workdir, {"GRAPHBRIDGE_INTERRUPT_DURING_SAVE": "20"})
  text = "\n".join(line for _, line in lines)
  assert rc == 130, text[-3000:]
  assert lines[-1][1].startswith("graphbridge-train: interrupted after step 20 of 40; "), text
  assert "Traceback" not in text
  # the write in flight is waited for (a bounded wait), then the process ends
  assert lines[-1][0] - _at(lines, "step 20/40") < 20, lines[-6:]
  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
  assert checkpoints.all_steps() == [10, 20]
  for step in (10, 20):
    checkpoints.verify(step, checkpoints.manifest(step))
  assert not [n for n in os.listdir(checkpoints.directory) if checkpoint_lib.TMP_SUFFIX in n]
  assert trained_lib.load_trained(workdir).step == 20
  shutil.rmtree(workdir)
