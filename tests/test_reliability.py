"""Interrupted runs, damaged checkpoints, non-finite losses and config typos."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from graphbridge.core import errors
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.runs import validate as validate_lib
from graphbridge.data import readers as readers_lib
from graphbridge.training import trained as trained_lib
from graphbridge.training import trainer as trainer_lib
from tests.conftest import REPO_ROOT, load_config_module
from tests.reliability_worker import config_for

STEPS = 40


def run_worker(data_path, workdir, steps=STEPS, env_extra=None):
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run(
    [
      sys.executable,
      os.path.join(REPO_ROOT, "tests", "reliability_worker.py"),
      data_path,
      workdir,
      str(steps),
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO_ROOT,
    timeout=300,
  )


def final_params(workdir):
  run = trained_lib.load_trained(workdir)
  return run.step, jax.tree.map(np.asarray, run.edge_params())


def assert_bit_identical(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(data_path, tmp_path_factory):
  """An uninterrupted run, with the same seed and command as the interrupted ones."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc = run_worker(data_path, workdir)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return final_params(workdir) + (workdir,)


@pytest.mark.parametrize(
  "fault",
  [
    {"GRAPHBRIDGE_KILL_AFTER_STEP": "25"},  # between checkpoints 20 and 30
    {"GRAPHBRIDGE_KILL_DURING_SAVE": "30"},
  ],
)  # while step 30 is written
def test_sigkill_then_same_command_ends_bit_identical(fault, data_path, reference, tmp_path):
  workdir = str(tmp_path / "run")
  killed = run_worker(data_path, workdir, env_extra=fault)
  assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
  assert "finished" not in killed.stdout
  complete = checkpoint_lib.Checkpoints(
    os.path.join(workdir, "checkpoints"), read_only=True
  ).latest_complete_step()
  # saves are asynchronous: step 20 may still have been in flight when the process died; step 30
  # never completed in either case
  assert complete in (10, 20)
  resumed = run_worker(data_path, workdir)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
  assert f"resumed from checkpoint step {complete}" in resumed.stdout
  step, params = final_params(workdir)
  assert step == reference[0] == STEPS
  assert_bit_identical(params, reference[1])


# ---- damaged checkpoints (in process) -----------------------------------------------------------


@pytest.fixture
def trained_workdir(data_path, reference, tmp_path):
  """The reference run stopped after step 30 (its checkpoints 20 and 30; step 40 removed), as a
  run with the same config that was interrupted would leave it."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[2], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(STEPS)))
  assert checkpoint_lib.Checkpoints(
    os.path.join(workdir, "checkpoints"), read_only=True
  ).all_steps() == [20, 30]
  return workdir, readers_lib.load(data_path)


def _item_files(workdir, step, item):
  return [
    f
    for f in glob.glob(
      os.path.join(workdir, "checkpoints", str(step), item, "**", "*"), recursive=True
    )
    if os.path.isfile(f)
  ]


def _truncate_largest(files):
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  return victim


def _resume_and_compare(workdir, dataset, expect_from, messages, reference_params):
  logs = []
  result = trainer_lib.train(config_for(STEPS), workdir, dataset=dataset, log=logs.append)
  assert f"resumed from checkpoint step {expect_from}" in "\n".join(logs)
  assert result.steps_run == STEPS - expect_from
  step, params = final_params(workdir)
  assert step == STEPS
  assert_bit_identical(params, reference_params)
  return logs


@pytest.mark.parametrize(
  "damage", ["truncated_edge_file", "missing_edge_item", "corrupt_metadata", "truncated_train_item"]
)
def test_damaged_latest_checkpoint_falls_back(damage, trained_workdir, reference, capsys):
  workdir, dataset = trained_workdir
  step_dir = os.path.join(workdir, "checkpoints", "30")
  if damage == "truncated_edge_file":
    _truncate_largest(_item_files(workdir, 30, "edge.image.text"))
    expected = r"checkpoint step 30: item 'edge.image.text' is corrupt"
  elif damage == "missing_edge_item":
    shutil.rmtree(os.path.join(step_dir, "edge.audio.text"))
    expected = r"checkpoint step 30 is incomplete: missing item\(s\) edge.audio.text"
  elif damage == "corrupt_metadata":
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
      f.write('{"layout": {"graph": ')
    expected = r"checkpoint step 30: item 'meta' is corrupt"  # its sha256 differs
  else:
    _truncate_largest(_item_files(workdir, 30, "train"))
    expected = r"checkpoint step 30: item 'train' is corrupt"
  if damage == "truncated_train_item":  # evaluation needs only the edges: step 30 still evaluates
    assert trained_lib.load_trained(workdir, step=30).step == 30
  else:
    # the error names the step and the problem, for evaluation ...
    with pytest.raises(errors.CheckpointError, match=expected):
      trained_lib.load_trained(workdir, step=30)
    # ... and without an explicit step evaluation falls back to step 20, saying so on stderr
    capsys.readouterr()
    assert trained_lib.load_trained(workdir).step == 20
    skipped = capsys.readouterr().err.strip().splitlines()
    assert len(skipped) == 1 and re.search(expected, skipped[0]), skipped
    assert "using checkpoint step 20" in skipped[0]
  # training resumes from step 20, moving step 30 aside (kept, not deleted), and ends identical
  logs = _resume_and_compare(workdir, dataset, 20, expected, reference[1])
  assert any(re.search(expected, line) for line in logs)
  assert os.listdir(os.path.join(workdir, "checkpoints_damaged")) == ["30"]


def test_checkpoint_of_another_graph_is_an_error_not_a_fallback(trained_workdir, data_path):
  workdir, dataset = trained_workdir
  config = config_for(STEPS)
  config.graph.extra_edges = "image->audio"  # another graph than the one in the checkpoints
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(
    errors.CheckpointError, match=r"checkpoint step 30 in .* was written for another graph"
  ):
    trainer_lib.train(config, workdir, dataset=dataset, log=lambda _: None)
  assert (
    sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  )  # nothing written or removed


def test_all_checkpoints_damaged_starts_over_and_says_so(trained_workdir, reference):
  workdir, dataset = trained_workdir
  for step in (20, 30):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "edge.image.text"))
  logs = []
  with pytest.raises(errors.CheckpointError, match="no usable checkpoint"):
    trained_lib.load_trained(workdir)
  result = trainer_lib.train(config_for(STEPS), workdir, dataset=dataset, log=logs.append)
  assert result.steps_run == STEPS
  assert any("starting from scratch" in line for line in logs)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints_damaged"))) == ["20", "30"]
  assert_bit_identical(final_params(workdir)[1], reference[1])


# ---- non-finite loss ----------------------------------------------------------------------------


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_path, tmp_path):
  """An absurd learning rate makes the weights overflow; the run stops naming terms and edges,
  and every checkpoint on disk holds finite parameters."""
  workdir = str(tmp_path / "run")
  config = config_for(STEPS)
  config.optim.lr = 1e38
  config.optim.warmup_steps = 0
  config.optim.grad_clip = 0.0
  config.train.checkpoint_every = 1
  config.train.log_every = 1
  with pytest.raises(errors.NonFiniteError) as info:
    trainer_lib.train(config, workdir, dataset=readers_lib.load(data_path), log=lambda _: None)
  message = str(info.value)
  assert message.startswith("step ") and "non-finite" in message
  assert "edge_cos " in message or "cycle " in message  # a loss term named ...
  assert "->" in message  # ... with its edge or cycle
  assert "checkpoints hold the last good state" in message
  bad_step = int(message.split()[1].rstrip(":"))
  saved = checkpoint_lib.Checkpoints(
    os.path.join(workdir, "checkpoints"), read_only=True
  ).all_steps()
  assert saved and max(saved) < bad_step  # nothing saved at or after the bad update
  for leaf in jax.tree.leaves(trained_lib.load_trained(workdir).params):
    assert np.all(np.isfinite(leaf))


# ---- config typos, caught before anything is compiled ----------------------------------------


def test_validate_lists_every_problem_with_choices():
  config = load_config_module("configs/digits.py").get_config("tiny")
  config.unlock()
  config.strategy = "clip"
  config.optim.name = "adamm"
  config.train.stpes = 10
  config.graph.extra_edges = "image-audio"
  with pytest.raises(errors.ConfigError) as info:
    validate_lib.validate(config)
  message = str(info.value)
  assert "strategy='clip' is not one of: graph, pivot, pairwise, cmcr" in message
  assert "optim.name='adamm' is not one of: adam, adamw, sgd" in message
  assert "unknown config key 'train.stpes' (did you mean train.steps?)" in message
  assert "graph.extra_edges: edge 'image-audio' is not of the form 'src->dst'" in message


@pytest.mark.parametrize(
  "override, expected",
  [
    ("--config.strategy=clip", "strategy='clip' is not one of: graph, pivot, pairwise, cmcr"),
    (
      "--config.graph.extra_edges=image->depth",
      "unknown modality 'depth' (nodes: image, audio, text)",
    ),
    ("--config.train.stpes=5", "stpes"),
  ],
)
def test_cli_rejects_typos_before_compiling(override, expected, tmp_path):
  cmd = [
    sys.executable,
    os.path.join(REPO_ROOT, "launch", "train.py"),
    "--config=configs/digits.py:tiny",
    f"--workdir={tmp_path / 'run'}",
    override,
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0
  assert expected in out
  assert "plan:" not in out and "step 1" not in out  # failed before the step was built or compiled
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
