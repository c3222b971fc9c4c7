"""Fault injection: damaged checkpoints, changed configs on resume, two runs in one workdir, bad
config values and data files, full disks. Each case asserts the message and that nothing saved
was lost or changed (issue #14; docs/reliability.md)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from graphbridge import checkpoint as ckpt_lib
from graphbridge import data as data_lib
from graphbridge import train as train_lib
from tests.conftest import REPO_ROOT, make_tri_modal_arrays
from tests.reliability_worker import config_for

STEPS = 20


def tree_digest(root: str) -> dict[str, str]:
  """{relative path: sha256} of every file under root (what 'nothing changed' compares)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def quiet(_):
  pass


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("data") / "tri.npz")
  np.savez(path, **make_tri_modal_arrays())
  return path


@pytest.fixture(scope="module")
def dataset(data_path):
  return data_lib.load(data_path)


def small_config(steps=STEPS):
  c = config_for(steps)
  c.train.log_every = 5
  c.train.print_every = 10
  c.train.checkpoint_every = 10
  c.train.tensorboard = False
  return c


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory):
  """A finished run (checkpoints 10 and 20)."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  train_lib.train(small_config(), workdir, dataset=dataset, log=quiet)
  return workdir


@pytest.fixture
def run_copy(finished, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  return workdir


def _item_files(workdir, step, item):
  return sorted(f for f in glob.glob(os.path.join(workdir, "checkpoints", str(step), item, "**", "*"),
                                     recursive=True) if os.path.isfile(f))


def _flip_bit(path, offset=None):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x10
    f.seek(0)
    f.write(data)


# ---- 1. checkpoint integrity ---------------------------------------------------------------------

def test_every_saved_step_has_a_manifest_that_matches(finished):
  checkpoints = ckpt_lib.Checkpoints(os.path.join(finished, "checkpoints"), read_only=True)
  assert checkpoints.all_steps() == [10, 20]
  for step in (10, 20):
    manifest = checkpoints.manifest(step)
    assert set(manifest) >= {"meta", "train", "edge.image.text", "edge.text.image"}
    checkpoints.verify(step, manifest)  # no error


def test_flipped_bit_in_an_edge_array_is_an_error_naming_step_and_item(run_copy):
  victim = max(_item_files(run_copy, 20, "edge.image.text"), key=os.path.getsize)
  _flip_bit(victim)
  with pytest.raises(ckpt_lib.CheckpointCorruptError,
                     match=r"checkpoint step 20: item 'edge.image.text' is corrupt \(sha256 differs") as info:
    train_lib.load_trained(run_copy, step=20)
  assert (info.value.step, info.value.item) == (20, "edge.image.text")
  # without an explicit step, evaluation uses the newest verified step
  assert train_lib.load_trained(run_copy).step == 10


def test_corrupt_step_falls_back_to_the_newest_verified_and_is_kept_aside(run_copy, dataset):
  victim = max(_item_files(run_copy, 20, "train"), key=os.path.getsize)
  _flip_bit(victim)
  damaged_files = tree_digest(os.path.join(run_copy, "checkpoints", "20"))
  logs = []
  result = train_lib.train(small_config(), run_copy, dataset=dataset, log=logs.append)
  text = "\n".join(logs)
  assert "checkpoint step 20: item 'train' is corrupt" in text
  assert "resumed from checkpoint step 10" in text and result.steps_run == 10
  # the damaged step is kept, byte for byte, in checkpoints_damaged/
  assert tree_digest(os.path.join(run_copy, "checkpoints_damaged", "20")) == damaged_files


def test_flipped_bit_in_metadata_is_detected(run_copy):
  _flip_bit(os.path.join(run_copy, "checkpoints", "20", "meta", "metadata"), offset=5)
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match=r"step 20: item 'meta' is corrupt"):
    train_lib.load_trained(run_copy, step=20)


# ---- 2. run identity -----------------------------------------------------------------------------

@pytest.mark.parametrize("change, expected", [
    (lambda c: setattr(c.loss, "cycle_starts", "image"), r"loss.cycle_starts: '' -> 'image'"),
    (lambda c: setattr(c.loss, "supervised_edges", "image->text"), r"loss plan edge_cos terms: removed"),
    (lambda c: setattr(c.optim, "lr", 0.01), r"optim.lr: 0.002 -> 0.01"),
    (lambda c: setattr(c, "seed", 7), r"seed: 0 -> 7"),
    (lambda c: setattr(c.train, "steps", 10), r"train.steps: 20 -> 10"),
])
def test_resume_with_another_config_stops_with_the_diff(change, expected, run_copy, dataset):
  before = tree_digest(run_copy)
  config = small_config()
  config.unlock()
  change(config)
  with pytest.raises(train_lib.RunMismatchError, match=r"belongs to another run; resuming would change:") as info:
    train_lib.train(config, run_copy, dataset=dataset, log=quiet)
  assert __import__("re").search(expected, str(info.value)), str(info.value)
  assert "allow_resume_changes" in str(info.value)
  assert tree_digest(run_copy) == before          # nothing written, moved or removed
  assert not os.path.exists(os.path.join(run_copy, "checkpoints_damaged"))


def test_resume_with_other_data_of_the_same_dims_stops(run_copy, data_path):
  arrays = make_tri_modal_arrays()
  arrays["image_emb"] = arrays["image_emb"][::-1].copy()
  other = data_lib.from_arrays(arrays, source="other.npz")
  before = tree_digest(run_copy)
  with pytest.raises(train_lib.RunMismatchError, match=r"data: other.npz differs from .*tri.npz"):
    train_lib.train(small_config(), run_copy, dataset=other, log=quiet)
  assert tree_digest(run_copy) == before


def test_safe_changes_resume_and_explicit_override_is_recorded(run_copy, dataset):
  config = small_config(30)            # longer, other print/log intervals, other eval options
  config.train.print_every = 5
  config.train.log_every = 2
  config.eval.ks = (1, 3)
  logs = []
  result = train_lib.train(config, run_copy, dataset=dataset, log=logs.append)
  assert result.steps_run == 10 and "resumed from checkpoint step 20" in "\n".join(logs)
  config = small_config(40)
  config.optim.lr = 0.001
  with pytest.raises(train_lib.RunMismatchError):
    train_lib.train(config, run_copy, dataset=dataset, log=quiet)
  config.train.allow_resume_changes = True
  logs = []
  train_lib.train(config, run_copy, dataset=dataset, log=logs.append)
  assert "with changes (train.allow_resume_changes=True):\n  optim.lr: 0.002 -> 0.001" in "\n".join(logs)
  meta = train_lib.load_trained(run_copy).meta
  assert meta["resume_changes"] == [{"step": 30, "changes": ["optim.lr: 0.002 -> 0.001"]}]
  assert meta["config"]["optim"]["lr"] == 0.001
