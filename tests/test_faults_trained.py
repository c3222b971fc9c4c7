"""Faults on a trained workdir. Fallbacks to an older checkpoint step, in every entry point: one
line naming the step and item skipped, never a newer step's report replaced unasked; a step's
manifest written with the step, and a step of the current format without one treated as
incomplete. Resumes that cannot be, said before anything is restored or compiled (the dry run
too); a finished run's final losses after a kill before its report; the Python API's arguments
(docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from graphbridge import api
from graphbridge.core import errors
from graphbridge.data import readers as readers_lib
from graphbridge.runs import dry_run as dry_run_lib
from graphbridge.runs import evaluate as evaluate_run
from graphbridge.runs import experiment
from graphbridge.runs import graft as graft_run
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.training import trained as trained_lib
from graphbridge.training import trainer as trainer_lib
from tests.conftest import load_config_module
from tests.test_faults import _cli, _flip_bit, _item_files, quiet, small_config, tree_digest

SKIP_LINE = r"checkpoint step 20: item 'edge.image.text' is corrupt \(sha256 differs"


@pytest.fixture(scope="module")
def dataset(data_path):
  return readers_lib.load(data_path)


@pytest.fixture(scope="module")
def finished(dataset, data_path, tmp_path_factory):
  """A finished run (checkpoints 10 and 20) of the data at data_path."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  config = small_config()
  config.data.path = data_path
  trainer_lib.train(config, workdir, dataset=dataset, log=quiet)
  return workdir


@pytest.fixture
def run_copy(finished, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  return workdir


def _flip_edge(workdir, step=20, item="edge.image.text"):
  _flip_bit(max(_item_files(workdir, step, item), key=os.path.getsize))


# ---- the manifest is part of the step's write ----------------------------------------------------


def test_manifest_is_written_when_the_step_is_written_not_at_the_next_save(tmp_path):
  checkpoints = checkpoint_lib.Checkpoints(str(tmp_path / "checkpoints"))
  try:
    checkpoints.save_items(
      10, {"edge.a.b": {"w": np.ones((64, 32), np.float32)}}, {"rng": np.zeros(2)}, {"k": 1}
    )
    checkpoints._manager.wait_until_finished()  # Orbax's write done; no later save, no close
    step_dir = checkpoints.step_dir(10)
    assert os.path.isfile(os.path.join(step_dir, checkpoint_lib.MANIFEST))
    assert checkpoints.manifest(10).keys() == {"edge.a.b", "meta", "train"}
    assert checkpoints.step_format(10) == checkpoint_lib.FORMAT_VERSION >= 2
  finally:
    checkpoints.close()


def test_step_without_its_manifest_is_incomplete_and_skipped_with_one_line(run_copy, dataset):
  os.remove(os.path.join(run_copy, "checkpoints", "20", checkpoint_lib.MANIFEST))
  _flip_edge(run_copy)  # unverifiable now: it must not be restored
  expected = "checkpoint step 20 is incomplete: it has no checksum manifest sha256.json"
  with pytest.raises(errors.CheckpointCorruptError, match=expected):
    trained_lib.load_trained(run_copy, step=20)
  lines = []
  assert trained_lib.load_trained(run_copy, log=lines.append).step == 10
  assert len(lines) == 1 and expected in lines[0]
  assert "skipped it, using checkpoint step 10" in lines[0]
  # training resumes from step 10, the incomplete step moved aside (kept)
  logs = []
  result = trainer_lib.train(small_config(), run_copy, dataset=dataset, log=logs.append)
  assert result.steps_run == 10 and any(expected in line for line in logs)
  assert os.listdir(os.path.join(run_copy, "checkpoints_damaged")) == ["20"]


def test_step_of_the_format_before_manifests_still_loads_unverified(run_copy):
  """Older workdirs never had a manifest in the step's write (format 1): still loadable."""
  for step in (10, 20):
    os.remove(os.path.join(run_copy, "checkpoints", str(step), checkpoint_lib.MANIFEST))
    meta_path = os.path.join(run_copy, "checkpoints", str(step), "meta", "metadata")
    with open(meta_path) as f:
      meta = json.load(f)
    meta["format_version"] = 1
    with open(meta_path, "w") as f:
      json.dump(meta, f)
  lines = []
  assert trained_lib.load_trained(run_copy, log=lines.append).step == 20
  assert lines == []


def test_a_step_that_does_not_exist_is_named_with_the_steps_there_are(finished):
  with pytest.raises(errors.CheckpointError, match=r"no step 7 in .*checkpoints \(steps: 10, 20\)"):
    trained_lib.load_trained(finished, step=7)
  with pytest.raises(errors.CheckpointError, match=r"no step 7 .*\(steps: 10, 20\)"):
    api.load(finished, step=7)


# ---- every entry point says which step it skipped ---------------------------------------------


def test_graphbridge_load_prints_the_step_and_item_it_skipped(run_copy, capsys):
  _flip_edge(run_copy)
  run = api.load(run_copy)
  assert run.step == 10
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert "checkpoint step 20: item 'edge.image.text' is corrupt" in err[0]
  assert "using checkpoint step 10" in err[0]


def test_evaluate_fallback_never_replaces_a_newer_steps_report(run_copy, data_path, tmp_path):
  report = {"step": 20, "rows": [{"mAP": 0.5}]}
  with open(os.path.join(run_copy, "report.json"), "w") as f:
    json.dump(report, f)
  _flip_edge(run_copy)
  before = tree_digest(run_copy)
  lines = []
  with pytest.raises(
    errors.CheckpointCorruptError,
    match=r"report.json reports step 20, which is damaged now \(.*\); not replacing it with a "
    r"report of step 10, .*--out=DIR .*--step=10",
  ):
    evaluate_run.evaluate_workdir(run_copy, plots=False, log=lines.append)
  assert tree_digest(run_copy) == before  # the newer step's report is kept byte for byte
  assert any("skipped it, using checkpoint step 10" in line for line in lines)
  # written elsewhere, the fallback's report says which step it skipped
  out = str(tmp_path / "out")
  summary = evaluate_run.evaluate_workdir(run_copy, data_path, out=out, plots=False, log=quiet)
  assert summary["step"] == 10
  assert summary["skipped_steps"][0]["step"] == 20
  assert "edge.image.text" in summary["skipped_steps"][0]["problem"]
  with open(os.path.join(out, "report.md")) as f:
    assert "checkpoint step 20 was skipped (checkpoint step 20: item 'edge.image.text'" in f.read()
  # --step=10 replaces it on purpose, with no note (nothing was skipped)
  summary = evaluate_run.evaluate_workdir(run_copy, data_path, step=10, plots=False, log=quiet)
  assert summary["step"] == 10 and "skipped_steps" not in summary


def test_cli_evaluate_fallback_is_said_even_at_absl_error_verbosity(run_copy, data_path):
  with open(os.path.join(run_copy, "report.json"), "w") as f:
    json.dump({"step": 20}, f)
  _flip_edge(run_copy)
  before = tree_digest(run_copy)
  proc = _cli("evaluate.py", f"--workdir={run_copy}", f"--data={data_path}", "--noplots")
  out = proc.stdout + proc.stderr
  assert proc.returncode == 2, out[-3000:]
  assert "checkpoint step 20: item 'edge.image.text' is corrupt" in out
  assert "skipped it, using checkpoint step 10" in out
  assert "graphbridge-evaluate: " in proc.stderr and "not replacing it" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert tree_digest(run_copy) == before
  proc = _cli("evaluate.py", f"--workdir={run_copy}", "--step=7", "--noplots")
  assert proc.returncode == 2 and "no step 7 in" in proc.stderr and "(steps: 10, 20)" in proc.stderr


def test_graft_onto_a_run_with_a_damaged_newest_step_says_which_step_it_used(dataset, tmp_path):
  config = load_config_module("configs/graft_audio.py").get_config("tiny")
  config.data.path = dataset.source
  config.train.steps = 4
  config.train.checkpoint_every = 2
  config.model.hidden = (16,)
  base = str(tmp_path / "base")
  graft_run.train_base(config, base, dataset=dataset, report=False, log=quiet)
  _flip_edge(base, step=4, item="edge.image.text")
  before = tree_digest(base)
  logs = []
  graft_run.graft(
    config, base, str(tmp_path / "graft"), dataset=dataset, report=False, log=logs.append
  )
  skipped = [line for line in logs if "skipped it, using checkpoint step 2" in line]
  assert len(skipped) == 1 and "checkpoint step 4: item 'edge.image.text' is corrupt" in skipped[0]
  assert tree_digest(base) == before  # the old run is only read


# ---- resumes that cannot be, and what the dry run says ------------------------------------------


def test_allow_resume_changes_with_another_loss_plan_says_it_cannot_be_resumed(run_copy, dataset):
  config = small_config(30)
  config.loss.cycle_starts = "image"  # another loss plan: another train state structure
  config.train.allow_resume_changes = True
  before = tree_digest(run_copy)
  logs = []
  with pytest.raises(
    errors.RunMismatchError,
    match=r"checkpoint step 20 in .*: these changes cannot be resumed, even with "
    r"train.allow_resume_changes=True: they change the structure of the saved train state",
  ) as info:
    trainer_lib.train(config, run_copy, dataset=dataset, log=logs.append)
  assert "loss.cycle_starts: '' -> 'image'" in str(info.value)
  assert not any("resuming checkpoint step" in line for line in logs)  # not claimed, then refused
  assert tree_digest(run_copy) == before


def test_dry_run_on_a_trained_workdir_refuses_what_training_refuses(finished, data_path):
  config = small_config()
  config.data.path = data_path
  lines = dry_run_lib.dry_run(config, finished, log=quiet)
  assert lines  # the same config: valid, and it would resume
  config.optim.lr = 0.01
  with pytest.raises(errors.RunMismatchError, match=r"optim.lr: 0.002 -> 0.01") as info:
    dry_run_lib.dry_run(config, finished, log=quiet)
  assert "belongs to another run; resuming would change" in str(info.value)
  config.train.allow_resume_changes = True
  said = []
  dry_run_lib.dry_run(config, finished, log=said.append)
  assert any("with changes (train.allow_resume_changes=True)" in line for line in said)


def test_rerun_after_a_kill_between_the_last_checkpoint_and_the_report_keeps_the_final_losses(
  data_path, tmp_path
):
  config = small_config(10)
  config.data.path = data_path
  workdir = str(tmp_path / "run")
  first = experiment.train_and_evaluate(config, workdir, log=quiet, plots=False)
  for name in ("report.json", "report.md"):  # killed after the final checkpoint, before these
    os.remove(os.path.join(workdir, name))
  again = experiment.train_and_evaluate(config, workdir, log=quiet, plots=False)
  assert len(first["final_losses"]) >= 10
  assert again["final_losses"] == first["final_losses"]
  assert again["rows"] == first["rows"]


# ---- the Python API's arguments ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(finished):
  return api.load(finished)


@pytest.mark.parametrize(
  "call, error, expected",
  [
    (lambda r, x: r.translate(x, "image->text<-audio"), errors.GraphError, r"two sides"),
    (lambda r, x: r.translate(x, None), errors.GraphError, r"path must be a route"),
    (lambda r, x: r.translate(x + 1j, "image->text"), errors.DataError, r"complex values"),
    (lambda r, x: r.search(x, "image", "audio", k=None), ValueError, r"k must be a positive"),
    (lambda r, x: r.search(x, "image", "audio", k=float("nan")), ValueError, r"positive integer"),
    (lambda r, x: r.search(x + 1j, "image", "audio"), errors.DataError, r"complex values"),
  ],
)
def test_api_arguments_are_one_clear_error(run, call, error, expected):
  x = np.random.default_rng(0).normal(size=(3, run.model.dims["image"])).astype(np.float32)
  with pytest.raises(error, match=expected):
    call(run, x)


def test_api_search_refuses_a_gallery_with_a_nan_row(run):
  x = np.random.default_rng(0).normal(size=(3, run.model.dims["image"])).astype(np.float32)
  gallery, _ = run.gallery("audio")
  gallery = gallery.copy()
  gallery[3] = np.nan
  with pytest.raises(errors.DataError, match=r"gallery: row 3 has NaN"):
    run.search(x, "image", "audio", gallery=gallery)
  with pytest.raises(errors.DataError, match=r"row 3 has NaN"):
    run.index(gallery, "audio", "image")


def test_api_load_with_a_junk_config_json_names_the_file(run_copy):
  with open(os.path.join(run_copy, "config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(errors.DataError, match=r"config.json is not valid JSON"):
    api.load(run_copy)
