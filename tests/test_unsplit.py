"""Data without a held-out split: stopped before anything trains (with the fix), split
deterministically when asked (ids kept together, said before training, the same split at
evaluation), or evaluated on the training rows when asked, with a note."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_synthetic_arrays
from graphbridge import defaults
from graphbridge.core.errors import DataError
from graphbridge.data import readers
from graphbridge.runs import dry_run as dry_run_lib


def _write(tmp_path, drop=("train", "test"), ids=False):
  arrays = make_synthetic_arrays({"a": 5, "b": 7}, {"a": 60, "b": 40}, [("a", "b")])
  for m in ("a", "b"):
    for field in drop:
      del arrays[f"{m}_{field}"]
    if ids:
      arrays[f"{m}_id"] = np.arange(len(arrays[f"{m}_emb"])) % 20
  path = str(tmp_path / "data.npz")
  np.savez(path, **arrays)
  return path


def _config(path, unsplit):
  c = defaults.base_config()
  c.data.path, c.data.unsplit = path, unsplit
  return c


def test_stop_names_the_modalities_and_the_fix(tmp_path):
  path = _write(tmp_path)
  with pytest.raises(DataError) as info:
    readers.load_for_config(_config(path, "stop"))
  text = str(info.value)
  assert "a (60 of 60 rows), b (40 of 40 rows)" in text
  assert "no <m>_train/<m>_test arrays" in text
  assert "make_splits" in text and "data.unsplit=auto" in text


def test_dry_run_stops_too(tmp_path):
  c = _config(_write(tmp_path), "stop")
  with pytest.raises(DataError, match="test rows include training rows"):
    dry_run_lib.dry_run(c, log=lambda msg: None)


def test_auto_splits_by_ids_the_same_way_every_time(tmp_path):
  path = _write(tmp_path, ids=True)
  ds = readers.load_for_config(_config(path, "auto"))
  again = readers.load_for_config(_config(path, "auto"))
  for m, mod in ds.modalities.items():
    assert not (mod.train & mod.test).any() and (mod.train | mod.test).all()
    assert mod.test.any() and mod.train.any()
    np.testing.assert_array_equal(mod.test, again.modalities[m].test)
  # an id is in one split in every modality
  test_ids = {m: set(mod.ids[mod.test].tolist()) for m, mod in ds.modalities.items()}
  train_ids = {m: set(mod.ids[mod.train].tolist()) for m, mod in ds.modalities.items()}
  assert not (test_ids["a"] & train_ids["b"]) and not (test_ids["b"] & train_ids["a"])
  assert "data.unsplit=auto" in ds.summary() and "(by ids)" in ds.summary()
  # pairs with a test row never train
  assert len(ds.pairs_for("a", "b", "train")) < len(ds.pairs_for("a", "b", "all"))


def test_auto_by_rows_holds_out_a_fifth(tmp_path):
  ds = readers.load_for_config(_config(_write(tmp_path), "auto"))
  assert int(ds.modalities["a"].test.sum()) == 12 and int(ds.modalities["b"].test.sum()) == 8
  assert "(by rows)" in ds.summary()


def test_auto_completes_a_single_mask(tmp_path):
  ds = readers.load_for_config(_config(_write(tmp_path, drop=("test",)), "auto"))
  raw = readers.load(_write(tmp_path, drop=("test",)))
  for m, mod in ds.modalities.items():
    np.testing.assert_array_equal(mod.train, raw.modalities[m].train)
    np.testing.assert_array_equal(mod.test, ~raw.modalities[m].train)


def test_overlapping_masks_the_file_gives_are_never_changed(tmp_path):
  arrays = make_synthetic_arrays({"a": 5, "b": 7}, {"a": 60, "b": 40}, [("a", "b")])
  arrays["a_test"] = arrays["a_test"].copy()
  arrays["a_test"][np.nonzero(arrays["a_train"])[0][:3]] = True  # 3 rows in both
  path = str(tmp_path / "overlap.npz")
  np.savez(path, **arrays)
  with pytest.raises(DataError, match=r"a \(3 of 60 rows\) \(a: <m>_train and <m>_test overlap"):
    readers.load_for_config(_config(path, "auto"))
  same = readers.load_for_config(_config(path, "same"))
  assert "the numbers measure fit" in same.summary()


def test_data_with_a_split_is_untouched(tmp_path):
  arrays = make_synthetic_arrays({"a": 5, "b": 7}, {"a": 60, "b": 40}, [("a", "b")])
  path = str(tmp_path / "split.npz")
  np.savez(path, **arrays)
  ds = readers.load_for_config(_config(path, "stop"))
  np.testing.assert_array_equal(ds.modalities["a"].test, arrays["a_test"])
  assert "note" not in ds.summary()


def test_a_run_split_by_auto_is_evaluated_on_the_same_split(tmp_path):
  import graphbridge

  path = _write(tmp_path, ids=True)
  overrides = {
    "data.path": path,
    "data.unsplit": "auto",
    "train.steps": 2,
    "data.batch_size": 8,
    "model.hidden": (8,),
    "eval.tables": "retrieval",
  }
  run = graphbridge.fit("npz", str(tmp_path / "run"), plots=False, log=lambda m: None, **overrides)
  trained_on = readers.load_for_config(_config(path, "auto"))
  evaluated = run.dataset()
  for m in ("a", "b"):
    np.testing.assert_array_equal(evaluated.modalities[m].test, trained_on.modalities[m].test)
    assert evaluated.modalities[m].test.sum() < len(evaluated.modalities[m])
