"""Tests for graphbridge.graft: a new modality grafted onto a trained image+text graph.

One base run (image <-> text, module-scoped) and one graft of audio onto text, on a small synthetic
set with a clear class structure; the old workdir is hashed before and after everything."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.data import readers as readers_lib
from graphbridge.strategies import translator_graft
from graphbridge.core import errors
from graphbridge.runs import graft as graft_run
from graphbridge.data import dataset as dataset_lib
from graphbridge.training import trained as trained_lib
from graphbridge.model import translators as translators_lib

from conftest import REPO_ROOT, TRI_MODAL_DIMS, load_config_module, make_synthetic_arrays
from graphbridge.training import writers as writers_lib

ROWS = {"image": 96, "audio": 96, "text": 48}
PAIRED = [("image", "text"), ("audio", "text")]
OLD_EDGES = {"image->text", "text->image"}
NEW_EDGES = {"audio->text", "text->audio"}
STEPS = 40


def tree_hashes(root: str) -> dict[str, str]:
  """{relative path: sha256} of every file under root."""
  out = {}
  for dirpath, _, filenames in os.walk(root):
    for name in filenames:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def make_config(steps: int = STEPS):
  config = load_config_module("configs/graft_audio.py").get_config("tiny")
  config.model.hidden = (32,)
  config.data.batch_size = 16
  config.optim.lr = (
    1e-2  # 40 steps: every seed of this data reaches zero-shot mAP > 0.75 (chance ~0.35)
  )
  config.train.steps = steps
  config.train.log_every = 5
  config.train.checkpoint_every = steps  # one checkpoint: the final step
  return config


def quiet(msg: str) -> None:
  del msg


@pytest.fixture(scope="module")
def arrays():
  return make_synthetic_arrays(TRI_MODAL_DIMS, ROWS, PAIRED, seed=3)


@pytest.fixture(scope="module")
def dataset(arrays):
  return readers_lib.from_arrays(arrays, source="<synthetic graft>")


@pytest.fixture(scope="module")
def base(tmp_path_factory, dataset):
  """image <-> text trained on the data without audio; hashes of every file of its workdir."""
  old = str(tmp_path_factory.mktemp("graft") / "old")
  result = graft_run.train_base(make_config(), old, dataset=dataset, report=False, log=quiet)
  return {"dir": old, "result": result, "hashes": tree_hashes(old)}


@pytest.fixture(scope="module")
def grafted(base, dataset, tmp_path_factory):
  new = str(tmp_path_factory.mktemp("graft") / "new")
  lines = []
  result = graft_run.graft(
    make_config(), base["dir"], new, dataset=dataset, plots=False, log=lines.append
  )
  return {"dir": new, "result": result, "log": "\n".join(lines)}


def step_dir(workdir: str) -> str:
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  return os.path.join(workdir, "checkpoints", str(steps[-1]))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_base_has_no_audio(base):
  graph = base["result"].setup.graph
  assert graph.node_names == ("image", "text") and set(graph.edge_names) == OLD_EDGES


def test_subset_modalities_keeps_rows_and_pairs_between_kept(dataset):
  sub = dataset_lib.subset_modalities(dataset, ["text", "image"])
  assert sub.names == ("image", "text")  # the data's order
  assert list(sub.pairs) == [("image", "text")]
  assert sub.modalities["image"] is dataset.modalities["image"]
  with pytest.raises(errors.GraftError, match="modality 'depth' is not in the data"):
    dataset_lib.subset_modalities(dataset, ["image", "depth"])


def test_old_items_byte_identical_and_arrays_equal(base, grafted):
  old_dir, new_dir = step_dir(base["dir"]), step_dir(grafted["dir"])
  for edge in OLD_EDGES:
    item = checkpoint_lib.edge_item_name(edge)
    old_files = tree_hashes(os.path.join(old_dir, item))
    assert old_files, item
    assert tree_hashes(os.path.join(new_dir, item)) == old_files
    assert grafted["result"].item_digests[edge] == translator_graft.item_digest(old_dir, edge)
  old_items, new_items = (
    checkpoint_lib.Checkpoints(os.path.dirname(d), read_only=True).restore_edges(
      int(os.path.basename(d)), OLD_EDGES
    )
    for d in (old_dir, new_dir)
  )
  for edge in OLD_EDGES:
    assert_trees_equal(old_items[edge], new_items[edge])  # params and Adam moments


def test_old_workdir_unchanged(base, grafted):
  del grafted  # after the graft ran
  assert tree_hashes(base["dir"]) == base["hashes"]


def test_only_new_edges_train_in_one_step_with_frozen_buckets(grafted):
  setup = grafted["result"].train.setup
  layout = setup.layout
  assert {e.name for e in layout.frozen} == OLD_EDGES
  assert {e.name for e in layout.trainable_edges} == NEW_EDGES
  assert all(b.key.endswith("-frozen") for b in layout.frozen_buckets)
  # image and audio have the same dim: frozen image->text and trainable audio->text sit in different
  # buckets
  assert layout.where("image->text")[0] != layout.where("audio->text")[0]
  state = grafted["result"].train.state
  assert set(state["params"]["edges"]) == {b.key for b in layout.trainable_buckets}
  assert {t.name for t in setup.plan.terms} == NEW_EDGES
  assert {"->".join(c) for c in setup.plan.cycles} == {"audio->text->audio", "text->audio->text"}


def test_new_edges_trained_and_loss_fell(grafted):
  result = grafted["result"].train
  layout = result.setup.layout
  trained = result.edge_params()
  for edge in NEW_EDGES:
    bucket = layout.bucket_of(edge)
    init = translators_lib.init_edge_params(
      layout.graph.edge(edge), bucket.d_in, bucket.d_out, bucket.arch, seed=0
    )
    assert (
      max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(trained[edge]), jax.tree.leaves(init))
      )
      > 1e-3
    )
  rows = writers_lib.read_metrics(os.path.join(grafted["dir"], "metrics.jsonl"))
  assert rows[-1]["step"] == STEPS
  assert rows[-1]["loss/total"] < 0.8 * rows[0]["loss/total"], [r["loss/total"] for r in rows]
  assert "grad_norm/image->text" not in rows[-1] and "grad_norm/audio->text" in rows[-1]


def test_load_trained_new_run_has_every_edge(base, grafted):
  run = trained_lib.load_trained(grafted["dir"])
  assert set(run.graph.edge_names) == OLD_EDGES | NEW_EDGES
  assert run.graph.node_names == ("image", "text", "audio")
  assert set(run.meta["layout"]["frozen"]) == OLD_EDGES
  assert run.config.graft.from_workdir == os.path.abspath(base["dir"])
  old = trained_lib.load_trained(base["dir"]).edge_params()
  new = run.edge_params()
  for edge in OLD_EDGES:
    assert_trees_equal(old[edge], new[edge])
  provenance = json.load(open(os.path.join(grafted["dir"], translator_graft.GRAFT_FILE)))
  assert set(provenance["new_edges"]) == NEW_EDGES and set(provenance["frozen_edges"]) == OLD_EDGES


def test_new_modality_reaches_old_ones_zero_shot(grafted):
  report = json.load(open(os.path.join(grafted["dir"], "report.json")))
  rows = [r for r in report["rows"] if {r["query"], r["gallery"]} == {"audio", "image"}]
  routes = {r["route"] for r in rows}
  assert {"audio->text->image", "image->text->audio"} <= routes, routes  # eval.paths of the config
  assert all(r["hops"] >= 2 for r in rows)
  for r in (
    rows
  ):  # default route audio->text<-image meets in text; named ones translate into image / audio
    assert r["level"] == "class"
    assert r["mAP"] > r["chance_mAP"] + (0.15 if r["named_route"] else 0.3), r
  assert "graft" in report and set(report["graft"]["new_edges"]) == NEW_EDGES
  markdown = open(os.path.join(grafted["dir"], "report.md")).read()
  assert "## Grafted modality" in markdown and "audio->text->image" in markdown
  assert "zero-shot audio->image" in grafted["log"]


@pytest.mark.parametrize(
  "case",
  [
    "no_checkpoint",
    "no_dir",
    "dims_differ",
    "connect_to_unknown",
    "already_in_graph",
    "not_in_data",
    "inside_old",
    "workdir_of_another_run",
  ],
)
def test_bad_grafts_fail_before_writing(case, base, dataset, tmp_path, make_synthetic_dataset):
  config, old, data = make_config(), base["dir"], dataset
  new = str(tmp_path / "new")
  if case == "no_checkpoint":
    old = str(tmp_path / "empty")
    os.makedirs(old)
    match = "no checkpoints in"
  elif case == "no_dir":
    old = str(tmp_path / "missing")
    match = "no such directory"
  elif case == "dims_differ":
    data = make_synthetic_dataset({"image": 6, "audio": 6, "text": 10}, ROWS, PAIRED)
    match = (
      r"mismatch for 'text': the checkpoint in .* was trained with text\[8\], .* has text\[10\]"
    )
  elif case == "connect_to_unknown":
    config.graft.connect_to = "text,depth"
    match = r"graft.connect_to='depth' is not a node of the graph of .* \(nodes: image, text\)"
  elif case == "already_in_graph":
    config.graft.modality = "image"
    match = "graft.modality='image' is already in the graph"
  elif case == "not_in_data":
    config.graft.modality = "depth"
    match = r"graft.modality='depth' is not in the data .* \(modalities: image, audio, text\)"
  elif case == "inside_old":
    new = os.path.join(old, "grafted")
    match = "the old run is never written to"
  else:  # the base run's copy as --workdir: it holds checkpoints of image<->text only
    new = str(tmp_path / "copy")
    shutil.copytree(old, new)
    match = (
      r"already holds a run of another graph \(nodes: image\[6\], text\[8\]; "
      r".*choose a new directory"
    )
  before = tree_hashes(new) if os.path.exists(new) else None
  with pytest.raises(errors.GraftError, match=match):
    graft_run.graft(config, old, new, dataset=data, plots=False, log=quiet)
  assert (tree_hashes(new) if os.path.exists(new) else None) == before
  assert tree_hashes(base["dir"]) == base["hashes"]


def test_cli_grafts_end_to_end(base, arrays, tmp_path):
  npz = str(tmp_path / "data.npz")
  np.savez(npz, **arrays)
  new = str(tmp_path / "new")
  common = [
    "--config=configs/graft_audio.py:tiny",
    f"--config.data.path={npz}",
    "--config.model.hidden=(32,)",
    "--config.data.batch_size=16",
    "--noplots",
  ]
  proc = subprocess.run(
    [
      sys.executable,
      "launch/graft.py",
      *common,
      "--config.train.steps=10",
      f"--from_workdir={base['dir']}",
      f"--workdir={new}",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "zero-shot audio->image" in proc.stdout
  report = json.load(open(os.path.join(new, "report.json")))
  assert any(
    r["query"] == "audio" and r["gallery"] == "image" and r["hops"] == 2 for r in report["rows"]
  )
  assert set(trained_lib.load_trained(new).graph.edge_names) == OLD_EDGES | NEW_EDGES
  # a bad graft from the command line: a clear message, a non-zero exit, nothing written
  bad = str(tmp_path / "bad")
  proc = subprocess.run(
    [
      sys.executable,
      "launch/graft.py",
      *common,
      "--config.graft.modality=image",
      f"--from_workdir={base['dir']}",
      f"--workdir={bad}",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert "graft: graft.modality='image' is already in the graph" in proc.stderr
  assert not os.path.exists(bad)
  assert tree_hashes(base["dir"]) == base["hashes"]
