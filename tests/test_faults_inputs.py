"""Inputs a careless or hostile user gives: config values, data files, labels, Python API
arguments, command lines. Each is one clear error (one line and exit 2 in the CLIs) or, where
going on is right, the right numbers with the record saying what was used (docs/reliability.md)."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from graphbridge.core import errors
from graphbridge.data import readers as readers_lib
from graphbridge.evaluation import report as report_lib
from graphbridge.runs import validate as validate_lib
from graphbridge.training import trainer as trainer_lib
from tests.conftest import REPO_ROOT, make_tri_modal_arrays
from tests.test_faults import quiet, small_config
from tests.test_querybank import _hub_data, _Identity


def test_querybank_k_beyond_the_bank_records_the_k_used():
  dataset = _hub_data()  # 40 train rows of the query modality a, 40 of b
  asked = report_lib.build_report(
    _Identity(),
    dataset,
    options=report_lib.EvalOptions(tables=("retrieval",), querybank_k=100000),
  )
  whole = report_lib.build_report(
    _Identity(), dataset, options=report_lib.EvalOptions(tables=("retrieval",), querybank_k=40)
  )
  summary = asked.summary
  assert summary["querybank_k_used"] == {"a": 40, "b": 40}
  assert "k=100000 asked for" in summary["querybank"]
  assert "used k=40 for a queries, k=40 for b queries" in summary["querybank"]
  markdown = report_lib.markdown(summary, {}, "t")
  assert (
    "its 40 (a), 40 (b) nearest train rows" in markdown and "its 100000 nearest" not in markdown
  )
  # the numbers are those of the k used
  for got, want in zip(summary["rows"], whole.summary["rows"]):
    assert got["mAP"] == want["mAP"]
  assert "querybank_k_used" not in whole.summary and whole.summary["querybank"] == (
    "on, k=40 (asked for)"
  )
  np.testing.assert_equal(summary["querybank_k"], 100000)


# ---- config values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "key, value, expected",
  [
    ("train.steps", 0, "train.steps is 0 (and finetune.steps too): nothing would be trained"),
    ("loss.cycle_weights", ("abc",), "loss.cycle_weights must be numbers >= 0"),
    ("eval.max_queries", -4, "eval.max_queries must be an integer >= 0"),
  ],
)
def test_values_that_would_fail_late_fail_in_validate(key, value, expected, tmp_path):
  config = small_config()
  config.unlock()
  section, _, field = key.rpartition(".")
  setattr(config[section], field, value)
  with pytest.raises(errors.ConfigError, match=re.escape(expected)):
    validate_lib.validate(config)


def test_train_steps_zero_writes_nothing(tmp_path):
  config = small_config()
  config.train.steps = 0
  dataset = readers_lib.from_arrays(make_tri_modal_arrays())
  with pytest.raises(errors.ConfigError, match="nothing would be trained"):
    trainer_lib.train(config, str(tmp_path / "run"), dataset=dataset, log=quiet)
  assert not os.path.exists(tmp_path / "run")


def test_a_batch_beyond_device_memory_is_one_error_naming_the_batch_size():
  config = small_config()
  config.data.batch_size = 300_000  # [B, B] similarities: terabytes
  dataset = readers_lib.from_arrays(make_tri_modal_arrays())
  with pytest.raises(
    errors.DeviceMemoryError, match=r"step 1 needs more device memory than there is \("
  ) as info:
    trainer_lib.train(config, None, dataset=dataset, log=quiet)
  assert "lower data.batch_size" in str(info.value) and "\n" not in str(info.value)


# ---- data -------------------------------------------------------------------------------------


def test_labels_beyond_int32_give_the_numbers_of_small_labels():
  """Class-level pairs and label positives: labels * 2**32 + 7 would wrap to one class on the
  device; remapped on load, training is bit-identical to the small labels'."""
  small = make_tri_modal_arrays()
  wide = dict(small)
  for m in ("image", "audio", "text"):
    wide[f"{m}_label"] = small[f"{m}_label"].astype(np.int64) * 2**32 + 7
  datasets = [readers_lib.from_arrays(a) for a in (small, wide)]
  for m in ("image", "audio", "text"):
    np.testing.assert_array_equal(
      datasets[0].modalities[m].labels, datasets[1].modalities[m].labels
    )
  config = small_config(10)
  config.loss.infonce_positives = "label"
  results = [trainer_lib.train(config, None, dataset=d, log=quiet) for d in datasets]
  assert results[0].final_metrics == results[1].final_metrics
  for a, b in zip(jax.tree.leaves(results[0].params), jax.tree.leaves(results[1].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_npz_member_that_is_a_pickle_is_named_as_such(tmp_path):
  arrays = make_tri_modal_arrays()
  path = str(tmp_path / "pickled.npz")
  np.savez(path, **{k: v for k, v in arrays.items() if k != "image_label"})
  with zipfile.ZipFile(path, "a") as z:
    z.writestr("image_label.npy", pickle.dumps(arrays["image_label"]))
  with pytest.raises(
    errors.DataError, match=r"array 'image_label' is not an array but a Python pickle"
  ):
    readers_lib.load(path)


# ---- command lines: one line and exit status 2 -----------------------------------------------


@pytest.mark.parametrize(
  "script, args, expected",
  [
    ("train.py", ["--workdir=/nonexistent/x"], "graphbridge-train: --config is required"),
    (
      "evaluate.py",
      ["--workdir=/nonexistent/x", "--step=abc"],
      "graphbridge-evaluate: flag --step=abc: invalid literal for int()",
    ),
    ("train.py", ["--config=digits:tiny", "--workdir="], "graphbridge-train: --workdir is empty"),
  ],
)
def test_cli_flag_errors_are_one_line_and_exit_2(script, args, expected):
  proc = subprocess.run(
    [sys.executable, os.path.join(REPO_ROOT, "launch", script), *args],
    capture_output=True,
    text=True,
    cwd=REPO_ROOT,
    timeout=300,
    env={**os.environ, "PYTHONPATH": REPO_ROOT},
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert lines[-2].startswith(expected) and lines[-1].startswith("hint: "), proc.stderr[-2000:]
  assert "FATAL" not in proc.stderr and "Traceback" not in proc.stderr
