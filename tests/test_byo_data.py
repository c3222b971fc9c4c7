"""Bring-your-own embeddings: the on-disk format, its validation messages, and configs/npz.py end to
end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from graphbridge.data import readers as readers_lib
from graphbridge.runs import experiment
from graphbridge.core.errors import DataError

from conftest import REPO_ROOT, load_config_module

EXAMPLE_DIMS = {"image": 12, "text": 16, "audio": 10}


def example_arrays(
  n_instances: int = 96, n_classes: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
  """A small BYO data set with instance ids, as a user's extractor would write it.

  Every instance (a latent vector near its class centre) is seen by three encoders (random
  nonlinear views of different dims); rows are shuffled per modality, so row i is not id i. Pairs
  (by id, train instances only) join image<->text and audio<->text; image<->audio never is."""
  rng = np.random.default_rng(seed)
  latent_dim = 8
  centres = 2.0 * rng.normal(size=(n_classes, latent_dim))
  labels = np.arange(n_instances) % n_classes
  latent = centres[labels] + 0.6 * rng.normal(size=(n_instances, latent_dim))
  test_ids = rng.permutation(n_instances)[: n_instances // 4]
  arrays, row_of = {}, {}
  for m, dim in EXAMPLE_DIMS.items():
    order = rng.permutation(n_instances)  # row r holds instance order[r]
    view = rng.normal(size=(latent_dim, dim))
    emb = np.tanh(latent[order] @ view / np.sqrt(latent_dim)) + 0.05 * rng.normal(
      size=(n_instances, dim)
    )
    test = np.isin(order, test_ids)
    arrays.update(
      {
        f"{m}_emb": emb.astype(np.float32),
        f"{m}_id": order.astype(np.int64),
        f"{m}_label": labels[order].astype(np.int64),
        f"{m}_train": ~test,
        f"{m}_test": test,
      }
    )
    row_of[m] = np.argsort(order)  # instance -> row
  train_ids = np.setdiff1d(np.arange(n_instances), test_ids)
  for a, b in (("image", "text"), ("audio", "text")):
    arrays[f"pairs_{a}__{b}"] = np.stack([row_of[a][train_ids], row_of[b][train_ids]], 1).astype(
      np.int64
    )
  arrays["class_names"] = np.asarray([f"class{i}" for i in range(n_classes)])
  return arrays


def write_example_npz(path: str, **kwargs) -> str:
  np.savez(path, **example_arrays(**kwargs))
  return path


# --------------------------------------------------------------------------- the format


def test_example_loads_from_npz_and_from_a_folder(tmp_path):
  arrays = example_arrays()
  npz = readers_lib.load(write_example_npz(str(tmp_path / "mine.npz")))
  folder = tmp_path / "mine"
  folder.mkdir()
  for key, value in arrays.items():
    np.save(folder / f"{key}.npy", value)
  from_folder = readers_lib.load(str(folder))
  for ds in (npz, from_folder):
    assert set(ds.names) == set(EXAMPLE_DIMS)
    assert ds.dims == EXAMPLE_DIMS
    graph = ds.default_graph()
    assert set(graph.edge_names) == {"image->text", "text->image", "audio->text", "text->audio"}
    assert graph.hop_distance("image", "audio") == 2
    # pairs join rows of the same instance
    for (a, b), pairs in ds.pairs.items():
      np.testing.assert_array_equal(
        ds.modalities[a].ids[pairs[:, 0]], ds.modalities[b].ids[pairs[:, 1]]
      )
  np.testing.assert_array_equal(npz.modalities["audio"].emb, from_folder.modalities["audio"].emb)


def _corrupt(arrays: dict, change: str) -> dict:
  arrays = dict(arrays)
  if change == "missing_emb":
    del arrays["audio_emb"]
  elif change == "misnamed_emb":
    arrays["audio_embedding"] = arrays.pop("audio_emb")
  elif change == "misnamed_pairs":
    arrays["pairs_image_text"] = arrays.pop("pairs_image__text")
  elif change == "pairs_unknown_modality":
    arrays["pairs_image__depth"] = arrays["pairs_image__text"]
  elif change == "pair_out_of_range":
    arrays["pairs_audio__text"] = arrays["pairs_audio__text"].copy()
    arrays["pairs_audio__text"][5, 1] = 96
  elif change == "label_count":
    arrays["text_label"] = arrays["text_label"][:-2]
  elif change == "id_count":
    arrays["image_id"] = arrays["image_id"][:10]
  elif change in ("nan_row", "inf_row", "zero_row"):
    emb = arrays["image_emb"].copy()
    emb[7] = {"nan_row": np.nan, "inf_row": np.inf, "zero_row": 0.0}[change]
    arrays["image_emb"] = emb
  elif change == "no_pairs":
    del arrays["pairs_audio__text"]
  else:
    raise AssertionError(change)
  return arrays


@pytest.mark.parametrize(
  "change,message",
  [
    ("missing_emb", r"audio_(id|label|train|test) given but audio_emb is missing"),
    ("misnamed_emb", r"unrecognised array name\(s\) audio_embedding; expected <modality>_emb"),
    ("misnamed_pairs", r"unrecognised array name\(s\) pairs_image_text; expected .*pairs_<a>__<b>"),
    (
      "pairs_unknown_modality",
      r"pairs_image__depth names modality 'depth' but there is no depth_emb",
    ),
    ("pair_out_of_range", r"pairs_audio__text row 5: index 96 out of range for text \(96 rows\)"),
    ("label_count", r"text_label has shape \(94,\) but text_emb has 96 rows"),
    ("id_count", r"image_id has shape \(10,\) but image_emb has 96 rows"),
    ("nan_row", r"embedding 'image' row 7 has NaN"),
    ("inf_row", r"embedding 'image' row 7 has inf"),
    ("zero_row", r"embedding 'image' row 7 has zero norm"),
    ("no_pairs", r"modality 'audio' has no pairs with any other modality"),
  ],
)
def test_bad_files_fail_with_a_message_naming_the_array(tmp_path, change, message):
  path = str(tmp_path / "bad.npz")
  np.savez(path, **_corrupt(example_arrays(), change))
  with pytest.raises(DataError, match=message):
    readers_lib.load(path)


# --------------------------------------------------------------------------- configs/npz.py


def test_npz_config_without_a_path_names_the_missing_flag():
  config = load_config_module("configs/npz.py").get_config("tiny")
  with pytest.raises(DataError, match=r"add --config.data.path=FILE.npz"):
    experiment.load_dataset(config)
  with pytest.raises(ValueError, match="unknown variant 'big'"):
    load_config_module("configs/npz.py").get_config("big")


def test_npz_config_loads_the_given_file(tmp_path):
  config = load_config_module("configs/npz.py").get_config("tiny")
  config.data.path = write_example_npz(str(tmp_path / "mine.npz"))
  assert set(experiment.load_dataset(config).names) == set(EXAMPLE_DIMS)


def test_train_on_my_npz_end_to_end(tmp_path):
  """launch/train.py --config=configs/npz.py:tiny --config.data.path=FILE trains and reports
  instance rows."""
  path = write_example_npz(str(tmp_path / "mine.npz"))
  workdir = tmp_path / "run"
  config = os.path.join(REPO_ROOT, "configs", "npz.py") + ":tiny"
  cmd = [
    sys.executable,
    os.path.join(REPO_ROOT, "launch", "train.py"),
    f"--config={config}",
    f"--config.data.path={path}",
    f"--workdir={workdir}",
    "--config.model.hidden=(16,)",
    "--config.train.checkpoint_every=30",
    "--config.eval.paths=image->text->audio",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  row = "| image | audio | image->text->audio | 2 | paired | instance |"
  assert row in proc.stdout, proc.stdout
  report = json.loads((workdir / "report.json").read_text())
  assert report["data"] == path
  rows = {(r["query"], r["gallery"], r["level"]): r for r in report["rows"]}
  assert len(rows) == 12  # 6 ordered pairs x (instance, class)
  zero_shot = rows[("image", "audio", "instance")]
  assert zero_shot["hops"] == 2 and zero_shot["route"] == "image->text->audio"
  assert zero_shot["chance_mAP"] < 0.2 and 0.0 <= zero_shot["mAP"] <= 1.0
  assert {r["hops"] for r in report["by_hops"]} == {1, 2}
  # with ids, paths between different modalities are scored against the same instance
  same_id = [r for r in report["reconstruction"] if r["target"] == "same id"]
  assert {r["hops"] for r in same_id} >= {1, 2}
  assert all(r["n"] == 24 for r in same_id)  # the 24 test instances
  for name in ("report.md", "projection.png", "retrieval_instance.png", "retrieval_class.png"):
    assert (workdir / name).stat().st_size > 0, name
