"""Faults that need a second process: the workdir lock when its file is deleted or replaced
(docs/reliability.md)."""

from __future__ import annotations

import os

import pytest

from graphbridge.core import errors
from graphbridge.data import readers as readers_lib
from graphbridge.runs import experiment
from graphbridge.training import lock as lock_lib
from graphbridge.training import trainer as trainer_lib
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
