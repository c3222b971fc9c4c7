"""Tests for graphbridge.data: loading (.npz, folder of .npy), validation messages, pair views."""

from __future__ import annotations

import os

import numpy as np
import pytest

from graphbridge.data import readers as readers_lib
from graphbridge.data import dataset as dataset_lib
from graphbridge.data import sampling as sampling_lib
from graphbridge.training import identity as identity_lib
from graphbridge.core.errors import DataError
from graphbridge.core.errors import GraphError
from graphbridge.core.graph import ModalityGraph


def assert_datasets_equal(a: dataset_lib.Dataset, b: dataset_lib.Dataset) -> None:
  """Same modalities (in any order), arrays, pairs and class names."""
  assert sorted(a.names) == sorted(b.names)
  for m in a.names:
    x, y = a.modalities[m], b.modalities[m]
    np.testing.assert_array_equal(x.emb, y.emb)
    np.testing.assert_array_equal(x.labels, y.labels)
    np.testing.assert_array_equal(x.train, y.train)
    np.testing.assert_array_equal(x.test, y.test)
  assert set(a.pairs) == set(b.pairs)
  for key in a.pairs:
    np.testing.assert_array_equal(a.pairs[key], b.pairs[key])
  assert a.class_names == b.class_names


# --------------------------------------------------------------------------- loading


def test_from_arrays_normalises_and_keeps_fields(tri_modal_arrays):
  ds = readers_lib.from_arrays(tri_modal_arrays)
  assert ds.names == ("image", "audio", "text")
  assert ds.dims == {"image": 6, "audio": 6, "text": 8}
  for m in ds.names:
    emb = ds.modalities[m].emb
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    raw = tri_modal_arrays[f"{m}_emb"]
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(ds.modalities[m].labels, tri_modal_arrays[f"{m}_label"])
  assert set(ds.pairs) == {("image", "text"), ("audio", "text")}
  assert ds.class_names == ("c0", "c1", "c2", "c3")


def test_npz_round_trip(tmp_path, tri_modal_arrays):
  path = str(tmp_path / "set.npz")
  np.savez(path, **tri_modal_arrays)
  loaded = readers_lib.load(path)
  assert loaded.source == path
  assert_datasets_equal(loaded, readers_lib.from_arrays(tri_modal_arrays))


def test_folder_of_npy_is_memory_mapped_and_equal(tmp_path, tri_modal_arrays, monkeypatch):
  folder = tmp_path / "set"
  folder.mkdir()
  for key, value in tri_modal_arrays.items():
    np.save(folder / f"{key}.npy", value)
  (folder / "README.txt").write_text("ignored: not .npy")
  seen_modes = []
  real_load = np.load

  def spy(*args, **kwargs):
    seen_modes.append(kwargs.get("mmap_mode"))
    return real_load(*args, **kwargs)

  monkeypatch.setattr(np, "load", spy)
  from_folder = readers_lib.load(str(folder))
  monkeypatch.undo()
  assert len(seen_modes) == len(tri_modal_arrays) and set(seen_modes) == {"r"}
  npz = str(tmp_path / "set.npz")
  np.savez(npz, **tri_modal_arrays)
  assert_datasets_equal(from_folder, readers_lib.load(npz))


def test_npz_and_folder_give_the_same_data_and_graph(tmp_path, tri_modal_arrays):
  """A folder has no order of its own (files sort by name), so modality order may differ from the
  .npz; everything that identifies the data and the graph must not depend on it."""
  folder = tmp_path / "set"
  folder.mkdir()
  for key, value in tri_modal_arrays.items():
    np.save(folder / f"{key}.npy", value)
  npz = str(tmp_path / "set.npz")
  np.savez(npz, **tri_modal_arrays)
  from_folder, from_npz = readers_lib.load(str(folder)), readers_lib.load(npz)
  assert from_npz.names == ("image", "audio", "text")
  assert set(from_folder.names) == set(from_npz.names)
  assert identity_lib._canonical_graph(
    from_folder.default_graph().to_dict()
  ) == identity_lib._canonical_graph(from_npz.default_graph().to_dict())
  assert from_folder.fingerprint() == from_npz.fingerprint()


def test_load_missing_and_empty_paths(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    readers_lib.load(str(tmp_path / "nope.npz"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="holds no .npy files"):
    readers_lib.load(str(tmp_path / "empty"))
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(DataError, match="could not read"):
    readers_lib.load(str(bad))


def test_embedded_digits():
  ds = readers_lib.load_digits()
  assert ds.names == ("image", "audio", "text")
  assert ds.dims == {"image": 64, "audio": 200, "text": 384}
  assert set(ds.pairs) == {("image", "text"), ("audio", "text")}
  assert len(ds.pairs_for("image", "audio", split="all")) == 0
  assert len(ds.pairs_for("audio", "image", split="all")) == 0
  graph = ds.default_graph()
  assert set(graph.edge_names) == {"image->text", "text->image", "audio->text", "text->audio"}
  assert graph.hop_distance("image", "audio") == 2
  for m in ds.names:
    mod = ds.modalities[m]
    assert mod.train.any() and mod.test.any() and not (mod.train & mod.test).any()
    assert len(np.unique(mod.labels)) == 10
  assert len(ds.class_names) == 10
  # class-level pairs: both rows of a pair share the digit
  for (a, b), pairs in ds.pairs.items():
    np.testing.assert_array_equal(
      ds.modalities[a].labels[pairs[:, 0]], ds.modalities[b].labels[pairs[:, 1]]
    )


# --------------------------------------------------------------------------- pair views


def test_pairs_for_swaps_direction(tri_modal_dataset):
  ds = tri_modal_dataset
  forward = ds.pairs_for("image", "text", split="all")
  backward = ds.pairs_for("text", "image", split="all")
  np.testing.assert_array_equal(forward, ds.pairs[("image", "text")])
  np.testing.assert_array_equal(backward, ds.pairs[("image", "text")][:, ::-1])
  assert backward.flags["C_CONTIGUOUS"]
  assert ds.pairs_for("image", "audio").shape == (0, 2)


def test_pairs_for_train_keeps_pairs_of_train_rows_only(tri_modal_arrays):
  ds = readers_lib.from_arrays(tri_modal_arrays)
  all_pairs = ds.pairs_for("text", "image", split="all")
  train = ds.pairs_for("text", "image", split="train")
  keep = (
    ds.modalities["text"].train[all_pairs[:, 0]] & ds.modalities["image"].train[all_pairs[:, 1]]
  )
  assert 0 < keep.sum() < len(all_pairs)  # the filter matters on this data
  np.testing.assert_array_equal(train, all_pairs[keep])
  assert (
    ds.modalities["text"].train[train[:, 0]].all()
    and ds.modalities["image"].train[train[:, 1]].all()
  )


def test_default_graph_and_check_graph(tri_modal_dataset):
  ds = tri_modal_dataset
  graph = ds.default_graph(extra_edges=["image->audio"])
  assert set(graph.edge_names) == {
    "image->text",
    "text->image",
    "audio->text",
    "text->audio",
    "image->audio",
  }
  ds.check_graph(graph)
  wrong_dim = ModalityGraph.build({"image": 9, "audio": 6, "text": 8})
  with pytest.raises(GraphError, match=r"dimension mismatch for 'image': graph says 9, data has 6"):
    ds.check_graph(wrong_dim)
  extra_node = ModalityGraph.build({"image": 6, "depth": 3})
  with pytest.raises(
    GraphError, match=r"graph node 'depth' is not in the data \(modalities: image, audio, text\)"
  ):
    ds.check_graph(extra_node)


def test_sample_batch_shapes_and_pairs(tri_modal_dataset):
  import jax

  ds = tri_modal_dataset
  pairs = ds.pairs_for("image", "text")
  arrays = {
    "emb": {m: ds.modalities[m].emb for m in ds.names},
    "rows": {"audio": np.nonzero(ds.modalities["audio"].train)[0].astype(np.int32)},
    "pairs": {"image->text": pairs.astype(np.int32)},
    "pair_labels": {"image->text": ds.modalities["image"].labels[pairs[:, 0]].astype(np.int32)},
  }
  batch = jax.jit(sampling_lib.sample_batch, static_argnums=2)(arrays, jax.random.PRNGKey(3), 16)
  assert batch["start"]["audio"].shape == (16, 6)
  assert batch["src"]["image->text"].shape == (16, 6) and batch["dst"]["image->text"].shape == (
    16,
    8,
  )
  # every sampled (src, dst) row pair is a train pair, and its label is the src row's label
  src, dst = np.asarray(batch["src"]["image->text"]), np.asarray(batch["dst"]["image->text"])
  img, txt = ds.modalities["image"], ds.modalities["text"]
  for s, d, label in zip(src, dst, np.asarray(batch["pair_label"]["image->text"])):
    i = int(np.argmax(img.emb @ s))
    j = int(np.argmax(txt.emb @ d))
    assert any((pairs[:, 0] == i) & (pairs[:, 1] == j))
    assert img.labels[i] == label
  audio_rows = [
    int(np.argmax(ds.modalities["audio"].emb @ x)) for x in np.asarray(batch["start"]["audio"])
  ]
  assert ds.modalities["audio"].train[audio_rows].all()


# --------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize("value,kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_row_names_modality_and_row(tri_modal_arrays, value, kind):
  tri_modal_arrays["audio_emb"][17, 3] = value
  tri_modal_arrays["audio_emb"][30, 0] = value
  with pytest.raises(
    DataError, match=rf"embedding 'audio' row 17 has {kind} \(2 bad rows in all\)"
  ):
    readers_lib.from_arrays(tri_modal_arrays)


def test_zero_norm_row(tri_modal_arrays):
  tri_modal_arrays["text_emb"][5] = 0.0
  with pytest.raises(DataError, match=r"embedding 'text' row 5 has zero norm"):
    readers_lib.from_arrays(tri_modal_arrays)


def test_empty_pair_set(tri_modal_arrays):
  tri_modal_arrays["pairs_image__text"] = np.zeros((0, 2), np.int64)
  with pytest.raises(DataError, match=r"pairs_image__text is empty"):
    readers_lib.from_arrays(tri_modal_arrays)


def test_pair_index_out_of_range(tri_modal_arrays):
  tri_modal_arrays["pairs_audio__text"][7, 1] = 24  # text has 24 rows
  with pytest.raises(
    DataError, match=r"pairs_audio__text row 7: index 24 out of range for text \(24 rows\)"
  ):
    readers_lib.from_arrays(tri_modal_arrays)
  tri_modal_arrays["pairs_audio__text"][7, 1] = 0
  tri_modal_arrays["pairs_audio__text"][2, 0] = -1
  with pytest.raises(DataError, match=r"pairs_audio__text row 2: index -1 out of range for audio"):
    readers_lib.from_arrays(tri_modal_arrays)


def test_pairs_bad_shape_and_dtype(tri_modal_arrays):
  arrays = dict(tri_modal_arrays, pairs_image__text=np.zeros((4, 3), np.int64))
  with pytest.raises(DataError, match=r"pairs_image__text must have shape \[P, 2\], got \(4, 3\)"):
    readers_lib.from_arrays(arrays)
  arrays = dict(tri_modal_arrays, pairs_image__text=np.zeros((4, 2), np.float32))
  with pytest.raises(DataError, match="must be integers"):
    readers_lib.from_arrays(arrays)


def test_label_length_mismatch(tri_modal_arrays):
  tri_modal_arrays["image_label"] = tri_modal_arrays["image_label"][:-1]
  with pytest.raises(DataError, match=r"image_label has shape \(47,\) but image_emb has 48 rows"):
    readers_lib.from_arrays(tri_modal_arrays)


def test_mask_must_be_bool_of_right_length(tri_modal_arrays):
  tri_modal_arrays["text_train"] = tri_modal_arrays["text_train"].astype(np.int64)
  with pytest.raises(DataError, match=r"text_train must be a bool array of shape \(24,\)"):
    readers_lib.from_arrays(tri_modal_arrays)


def test_no_train_rows(tri_modal_arrays):
  tri_modal_arrays["text_train"][:] = False
  with pytest.raises(DataError, match=r"modality 'text' has no train rows"):
    readers_lib.from_arrays(tri_modal_arrays)


def test_unknown_array_name_in_npz(tmp_path, tri_modal_arrays):
  path = str(tmp_path / "set.npz")
  np.savez(path, **tri_modal_arrays, image_embedding=np.ones((3, 2)), depthmap=np.ones(2))
  with pytest.raises(
    DataError,
    match=r"unrecognised array name\(s\) depthmap, image_embedding; expected "
    r"<modality>_emb",
  ):
    readers_lib.load(path)


def test_modality_with_no_pairs(tri_modal_arrays):
  del tri_modal_arrays["pairs_audio__text"]
  with pytest.raises(
    DataError,
    match=r"modality 'audio' has no pairs with any other modality; .*"
    r"\(pair sets: pairs_image__text\)",
  ):
    readers_lib.from_arrays(tri_modal_arrays)


def test_pairs_name_an_unknown_modality(tri_modal_arrays):
  tri_modal_arrays["pairs_image__depth"] = np.zeros((2, 2), np.int64)
  with pytest.raises(
    DataError, match=r"pairs_image__depth names modality 'depth' but there is no depth_emb"
  ):
    readers_lib.from_arrays(tri_modal_arrays)


def test_pairs_given_both_ways(tri_modal_arrays):
  tri_modal_arrays["pairs_text__image"] = tri_modal_arrays["pairs_image__text"][:, ::-1].copy()
  with pytest.raises(
    DataError,
    match=r"both pairs_(image__text|text__image) and pairs_(text__image|image__text) "
    r"given; give each pair set once",
  ):
    readers_lib.from_arrays(tri_modal_arrays)


def test_field_without_embedding(tri_modal_arrays):
  tri_modal_arrays["depth_label"] = np.zeros(4, np.int64)
  with pytest.raises(DataError, match="depth_label given but depth_emb is missing"):
    readers_lib.from_arrays(tri_modal_arrays)


def test_invalid_modality_name_in_data(tri_modal_arrays):
  arrays = dict(tri_modal_arrays, Bad__name_emb=np.ones((3, 2), np.float32))
  with pytest.raises(
    GraphError, match=r"invalid modality name 'Bad__name': use a letter followed by"
  ):
    readers_lib.from_arrays(arrays)
  arrays = dict(tri_modal_arrays, **{"2bad_emb": np.ones((3, 2), np.float32)})
  with pytest.raises(DataError, match=r"unrecognised array name\(s\) 2bad_emb"):
    readers_lib.from_arrays(arrays)


def test_no_modalities():
  with pytest.raises(DataError, match="no modalities"):
    readers_lib.from_arrays({})


def test_summary_and_fingerprint(tri_modal_dataset, tri_modal_arrays):
  assert "image: 48 rows x 6 (36 train, 12 test, 4 classes)" in tri_modal_dataset.summary()
  assert tri_modal_dataset.fingerprint() == readers_lib.from_arrays(tri_modal_arrays).fingerprint()
  tri_modal_arrays["image_emb"][0, 0] += 1.0
  assert tri_modal_dataset.fingerprint() != readers_lib.from_arrays(tri_modal_arrays).fingerprint()
  assert os.path.exists(readers_lib.DIGITS_PATH)
