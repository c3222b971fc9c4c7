"""Data helpers: pairs from ids, splits, Dataset.save, and the warning when evaluation falls back
to training rows."""

from __future__ import annotations

import numpy as np
import pytest

from graphbridge.data import readers as readers_lib
from graphbridge.data import tools as tools_lib
from graphbridge.evaluation import aligners as aligners_lib
from graphbridge.evaluation import report as report_lib
from graphbridge.model.translators import EdgeLayout, TranslatorArch, init_params


def test_pairs_from_ids_joins_equal_ids():
  pairs = tools_lib.pairs_from_ids([7, 3, 3, 9], [3, 7, 3, 5])
  assert pairs.tolist() == [[0, 1], [1, 0], [1, 2], [2, 0], [2, 2]]
  assert pairs.dtype == np.int64
  assert tools_lib.pairs_from_ids(np.array(["a", "b"]), np.array(["b", "c"])).tolist() == [[1, 0]]
  with pytest.raises(ValueError, match="no id of a"):
    tools_lib.pairs_from_ids([1, 2], [3])


def test_make_splits_exact_without_groups():
  split = tools_lib.make_splits(100, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
  assert [int(split[k].sum()) for k in ("train", "val", "test")] == [70, 10, 20]
  assert np.all(
    split["train"].astype(int) + split["val"] + split["test"] == 1
  )  # disjoint, covering
  again = tools_lib.make_splits(100, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
  assert all(np.array_equal(split[k], again[k]) for k in split)
  assert set(tools_lib.make_splits(10, (0.5, 0.5))) == {"train", "test"}
  with pytest.raises(ValueError, match="sum to 1"):
    tools_lib.make_splits(10, {"train": 0.8, "test": 0.3})


def test_make_splits_groups_agree_across_modalities():
  rng = np.random.default_rng(0)
  ids_a = rng.integers(0, 200, size=500)
  ids_b = rng.integers(50, 250, size=300)  # other rows, partly other ids
  fractions = {"train": 0.8, "test": 0.2}
  sa = tools_lib.make_splits(len(ids_a), fractions, seed=1, groups=ids_a)
  sb = tools_lib.make_splits(len(ids_b), fractions, seed=1, groups=ids_b)
  test_ids_a, test_ids_b = set(ids_a[sa["test"]]), set(ids_b[sb["test"]])
  shared = set(ids_a) & set(ids_b)
  assert (
    test_ids_a & shared == test_ids_b & shared
  )  # an id is test in both modalities or in neither
  assert not set(ids_a[sa["train"]]) & test_ids_a  # a group never straddles splits
  assert 0.1 < sa["test"].mean() < 0.3  # about the asked fraction


@pytest.mark.parametrize("target", ["mine.npz", "mine_folder"])
def test_dataset_save_round_trip(tmp_path, tri_modal_dataset, target):
  path = tri_modal_dataset.save(str(tmp_path / target))
  loaded = readers_lib.load(path)
  assert sorted(loaded.names) == sorted(tri_modal_dataset.names)  # a folder lists its files sorted
  assert loaded.class_names == tri_modal_dataset.class_names
  for m, mod in tri_modal_dataset.modalities.items():
    np.testing.assert_allclose(loaded.modalities[m].emb, mod.emb, atol=1e-6)
    for field in ("labels", "train", "test"):
      np.testing.assert_array_equal(getattr(loaded.modalities[m], field), getattr(mod, field))
  for key, pairs in tri_modal_dataset.pairs.items():
    np.testing.assert_array_equal(loaded.pairs[key], pairs)


def test_no_splits_warns_and_report_says_so(tri_modal_arrays):
  arrays = {k: v for k, v in tri_modal_arrays.items() if not k.endswith(("_train", "_test"))}
  dataset = readers_lib.from_arrays(arrays, source="nosplit.npz")
  graph = dataset.default_graph()
  layout = EdgeLayout.build(graph, TranslatorArch(hidden=(8,)))
  aligner = aligners_lib.GraphAligner(layout, init_params(layout, 0))
  lines = []
  summary = report_lib.run_report(
    aligner, dataset, None, options=report_lib.EvalOptions(silhouette_sample=50), log=lines.append
  )
  assert "include training rows" in summary["split_warning"]
  assert any(line.startswith("WARNING: nosplit.npz") for line in lines)
  assert "**Warning:**" in report_lib.markdown(summary, {}, "t")
  # a data set with disjoint splits gets no warning
  split_ds = readers_lib.from_arrays(tri_modal_arrays, source="split.npz")
  report = report_lib.build_report(
    aligner, split_ds, options=report_lib.EvalOptions(silhouette_sample=50)
  )
  assert "split_warning" not in report.summary
