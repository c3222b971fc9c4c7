"""The Python API (graphbridge.fit / load / Run) used as a notebook would, then checked against the
lower-level functions. (docs/api.md's blocks themselves run in tests/test_docs.py.)"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import graphbridge
from graphbridge.model import translators as translators_lib


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
  """Train 20 steps, load, translate, search, evaluate, train 10 more: the names a notebook
  would hold afterwards."""
  workdir = str(tmp_path_factory.mktemp("api") / "run")
  c = graphbridge.config("digits:tiny", **{"train.steps": 20})
  run = graphbridge.fit(c, workdir, plots=False)
  run = graphbridge.load(workdir)
  ds = run.dataset()
  x_image = ds.modalities["image"].emb[:8]
  x_audio = ds.modalities["audio"].emb
  z = run.translate(x_image, "image->text->audio")
  route = run.best_route("image", "audio")
  scores, idx = run.search(x_image, "image", "audio", k=10, gallery=x_audio, route=route)
  w = run.edge_params("image->text")
  report = run.evaluate(routes=["image->text->audio"])
  zero_shot = [r for r in report["rows"] if (r["query"], r["gallery"]) == ("image", "audio")]
  run = run.continue_training(steps=10, log=lambda msg: None)
  return dict(
    run=run,
    ds=ds,
    z=z,
    route=route,
    scores=scores,
    idx=idx,
    w=w,
    report=report,
    zero_shot=zero_shot,
  )


def test_cell_trains_translates_searches_and_continues(notebook):
  run, _ = notebook["run"], notebook["ds"]
  assert run.step == 30  # 20 steps, then continue_training(steps=10)
  z = notebook["z"]
  assert isinstance(z, np.ndarray) and z.shape == (8, 200)
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
  scores, idx = notebook["scores"], notebook["idx"]
  assert scores.shape == idx.shape == (8, 10)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
  assert notebook["route"] == "image->text<-audio"
  zero_shot = notebook["zero_shot"]
  assert zero_shot and all(0.0 <= r["mAP"] <= 1.0 for r in zero_shot)
  assert any(r["route"] == "image->text->audio" for r in notebook["report"]["rows"])
  assert os.path.isfile(os.path.join(run.workdir, "config.json"))


def test_search_matches_brute_force_cosine(notebook):
  run, ds = notebook["run"], notebook["ds"]
  xq, xg = ds.modalities["image"].emb[:16], ds.modalities["audio"].emb
  scores, idx = run.search(xq, xg, route="image->text->audio", k=5)
  zq = run.translate(xq, "image->text->audio")
  zg = run.translate(xg, "audio")
  brute = zq @ zg.T
  np.testing.assert_array_equal(idx, np.argsort(-brute, axis=1, kind="stable")[:, :5])
  np.testing.assert_allclose(scores, np.take_along_axis(brute, idx, axis=1), atol=1e-5)


def test_translate_normalises_and_keeps_array_type(notebook):
  run, ds = notebook["run"], notebook["ds"]
  x = ds.modalities["image"].emb[:4]
  expected = np.asarray(translators_lib.compose(run.layout, run.params, "image->text", x))
  out_np = run.translate(3.0 * x, "image->text")  # scaled input: normalised first
  out_jax = run.translate(jnp.asarray(x), "image->text")
  assert isinstance(out_np, np.ndarray) and isinstance(out_jax, jax.Array)
  np.testing.assert_allclose(out_np, expected, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out_jax), expected, atol=1e-5)
  with pytest.raises(graphbridge.GraphError, match="no edge image->audio"):
    run.translate(x, "image->audio")


def test_edge_params_by_name(notebook):
  run = notebook["run"]
  per_edge = translators_lib.unstack(run.layout, run.params)
  w = run.edge_params("image->text")
  for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(per_edge["image->text"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert set(run.edge_params()) == set(run.graph.edge_names)


def test_refit_of_finished_run_says_nothing_trained(notebook):
  lines = []
  run = graphbridge.fit(
    graphbridge.config("digits:tiny", **{"train.steps": 30}),
    notebook["run"].workdir,
    plots=False,
    log=lines.append,
  )
  assert run.step == 30
  assert any(line.startswith("nothing trained:") for line in lines), lines


def test_config_typos_name_the_field():
  c = graphbridge.config("digits:tiny")
  with pytest.raises(AttributeError, match='Did you mean "steps"'):
    c.train.stpes = 5
  with pytest.raises(graphbridge.ConfigError, match="closest: 'train.steps'"):
    graphbridge.config("digits:tiny", **{"train.stpes": 5})
