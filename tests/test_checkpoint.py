"""Tests for per-edge Orbax checkpoints: exact round trips, subsets, resume, incomplete steps."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from graphbridge.core import errors
from graphbridge.training import checkpoint as checkpoint_lib
from graphbridge.training import identity as identity_lib
from graphbridge.training import state as state_lib
from graphbridge.training import trained as trained_lib
from graphbridge.training import optimizer as optimizer_lib
from graphbridge.training import trainer as trainer_lib
from graphbridge.model import translators as translators_lib

N = 4  # steps per half run


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.shape(x) == np.shape(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def make_config(module, steps):
  config = module.get_config("tiny")
  config.model.hidden = (16,)
  config.data.batch_size = 16
  config.train.steps = steps
  config.train.log_every = 2
  config.train.checkpoint_every = N
  config.train.keep_checkpoints = 3
  # A learning rate that does not depend on train.steps, so "N steps, then resume to 2N" can be
  # compared with "2N steps at once" bit for bit.
  config.optim.warmup_steps = 0
  config.optim.final_lr_fraction = 1.0
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_config_module, tri_modal_dataset):
  root = tmp_path_factory.mktemp("runs")
  full_dir, resumed_dir = str(root / "full"), str(root / "resumed")
  logs = {"full": [], "half": [], "resumed": []}
  full = trainer_lib.train(
    make_config(digits_config_module, 2 * N),
    full_dir,
    dataset=tri_modal_dataset,
    log=logs["full"].append,
  )
  half = trainer_lib.train(
    make_config(digits_config_module, N),
    resumed_dir,
    dataset=tri_modal_dataset,
    log=logs["half"].append,
  )
  half_state = jax.device_get(half.state)
  resumed = trainer_lib.train(
    make_config(digits_config_module, 2 * N),
    resumed_dir,
    dataset=tri_modal_dataset,
    log=logs["resumed"].append,
  )
  return {
    "full": full,
    "full_dir": full_dir,
    "half_state": half_state,
    "resumed": resumed,
    "resumed_dir": resumed_dir,
    "logs": logs,
    "root": root,
  }


def test_train_writes_checkpoints_and_metrics(runs):
  full = runs["full"]
  assert full.steps_run == 2 * N and int(full.state["step"]) == 2 * N
  steps = sorted(
    int(d) for d in os.listdir(os.path.join(runs["full_dir"], "checkpoints")) if d.isdigit()
  )
  assert steps == [N, 2 * N]
  with open(os.path.join(runs["full_dir"], "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == list(range(2, 2 * N + 1, 2))
  assert all(np.isfinite(r["loss/total"]) and r["loss/total"] > 0 for r in rows)
  assert any(line.startswith(f"step {2 * N}/{2 * N}") for line in runs["logs"]["full"])


def test_load_trained_gives_the_trained_params(runs):
  full = runs["full"]
  loaded = trained_lib.load_trained(runs["full_dir"])
  assert loaded.step == 2 * N
  assert loaded.graph == full.setup.graph
  trained = jax.device_get(full.edge_params())
  restored = loaded.edge_params()
  assert set(restored) == set(trained) == set(full.setup.graph.edge_names)
  for edge in trained:
    assert_trees_equal(restored[edge], trained[edge])
  # the restored params translate like the trained ones
  x = np.asarray(full.dataset.modalities["image"].emb[:5])
  np.testing.assert_array_equal(
    translators_lib.compose(loaded.layout, loaded.params, "image->text->audio", x),
    translators_lib.compose(full.setup.layout, full.params, "image->text->audio", x),
  )
  assert int(loaded.config.train.steps) == 2 * N
  earlier = trained_lib.load_trained(runs["full_dir"], step=N)
  assert earlier.step == N
  assert not np.array_equal(jax.tree.leaves(earlier.params)[0], jax.tree.leaves(loaded.params)[0])


def test_items_round_trip_is_exact(runs, tmp_path, digits_config_module):
  full = runs["full"]
  setup = full.setup
  state = jax.device_get(full.state)
  edge_items, train_item = state_lib.state_to_items(setup, state)
  assert set(edge_items) == set(setup.graph.edge_names)
  checkpoints = checkpoint_lib.Checkpoints(str(tmp_path / "ckpt"), async_save=False)
  checkpoints.save(7, edge_items, train_item, {"note": "test"})
  checkpoints.close()

  reader = checkpoint_lib.Checkpoints(str(tmp_path / "ckpt"), read_only=True)
  assert reader.latest_complete_step() == 7
  assert reader.restore_meta(7)["note"] == "test"
  config = make_config(digits_config_module, 2 * N)
  tx = optimizer_lib.make_optimizer(config)
  template = state_lib.init_state(
    setup, tx, 123, optimizer_lib.phase_weights(config, setup.plan.settings, 0)
  )
  restored = state_lib.items_to_state(
    setup, template, reader.restore_edges(7), reader.restore_train(7)
  )
  restored = jax.device_get(restored)
  assert int(restored["step"]) == 2 * N
  assert_trees_equal(restored["params"], state["params"])
  assert_trees_equal(restored["opt"], state["opt"])
  np.testing.assert_array_equal(
    np.asarray(restored["rng"]),
    np.asarray(
      jax.random.key_data(state["rng"])
      if jax.dtypes.issubdtype(state["rng"].dtype, jax.dtypes.prng_key)
      else state["rng"]
    ),
  )
  assert_trees_equal(restored["weights"], state["weights"])
  assert_trees_equal(restored["health"], state["health"])
  # Adam moments really are per edge and non-trivial
  mu = jax.tree.leaves(edge_items["image->text"]["opt"])
  assert mu and any(np.abs(m).max() > 0 for m in mu)


def test_restore_a_subset_of_edges(runs):
  full = runs["full"]
  reader = checkpoint_lib.Checkpoints(os.path.join(runs["full_dir"], "checkpoints"), read_only=True)
  subset = reader.restore_edges(2 * N, ["image->text"])
  assert list(subset) == ["image->text"]
  trained = jax.device_get(full.edge_params())
  assert_trees_equal(subset["image->text"]["params"], trained["image->text"])
  with pytest.raises(
    errors.CheckpointError,
    match=r"checkpoint step 8 has no edge image->audio \(saved edges: .*image->text",
  ):
    reader.restore_edges(2 * N, ["image->audio"])


def test_resume_equals_one_run(runs):
  full, resumed, half_state = runs["full"], runs["resumed"], runs["half_state"]
  assert any(f"resumed from checkpoint step {N}" in line for line in runs["logs"]["resumed"])
  assert not any("resumed" in line for line in runs["logs"]["half"])
  assert resumed.steps_run == N
  full_state, resumed_state = jax.device_get(full.state), jax.device_get(resumed.state)
  assert int(resumed_state["step"]) == 2 * N
  assert_trees_equal(resumed_state["params"], full_state["params"])
  assert_trees_equal(resumed_state["opt"], full_state["opt"])
  # and the second call really trained: N more steps moved the params
  assert not np.array_equal(
    jax.tree.leaves(half_state["params"])[0], jax.tree.leaves(full_state["params"])[0]
  )


def test_incomplete_checkpoint_falls_back(runs, tmp_path):
  work = str(tmp_path / "copy")
  shutil.copytree(runs["full_dir"], work)
  latest = os.path.join(work, "checkpoints", str(2 * N))
  shutil.rmtree(os.path.join(latest, "edge.image.text"))
  reader = checkpoint_lib.Checkpoints(os.path.join(work, "checkpoints"), read_only=True)
  with pytest.raises(
    errors.CheckpointError,
    match=rf"checkpoint step {2 * N} is incomplete: missing item\(s\) edge.image.text",
  ):
    reader.check_complete(2 * N)
  assert reader.latest_complete_step() == N
  assert trained_lib.load_trained(work).step == N
  os.remove(os.path.join(latest, "meta", "metadata"))
  with pytest.raises(errors.CheckpointError, match="has no metadata item"):
    reader.restore_meta(2 * N)
  with pytest.raises(errors.CheckpointError, match="no checkpoints in"):
    trained_lib.load_trained(str(tmp_path / "empty"))


def test_resume_with_another_graph_is_refused(
  runs, tmp_path, digits_config_module, tri_modal_dataset
):
  work = str(tmp_path / "copy")
  shutil.copytree(runs["full_dir"], work)
  config = make_config(digits_config_module, 2 * N)
  config.graph.extra_edges = "image->audio"
  with pytest.raises(
    errors.CheckpointError,
    match=rf"checkpoint step {2 * N} in .* was written for another "
    r"graph .* use a fresh --workdir",
  ):
    trainer_lib.train(config, work, dataset=tri_modal_dataset, log=lambda _: None)


def test_train_on_a_finished_workdir_runs_no_steps(
  runs, tmp_path, digits_config_module, tri_modal_dataset
):
  work = str(tmp_path / "copy")
  shutil.copytree(runs["full_dir"], work)
  result = trainer_lib.train(
    make_config(digits_config_module, 2 * N), work, dataset=tri_modal_dataset, log=lambda _: None
  )
  assert result.steps_run == 0
  # fewer steps than the checkpoint holds would label a longer run as a shorter one: an error
  with pytest.raises(errors.RunMismatchError, match=rf"train.steps: {2 * N} -> {N}"):
    trainer_lib.train(
      make_config(digits_config_module, N), work, dataset=tri_modal_dataset, log=lambda _: None
    )


def test_split_and_merge_by_edge(runs):
  full = runs["full"]
  layout = full.setup.layout
  state = jax.device_get(full.state)
  per_edge, shared = checkpoint_lib.split_by_edge(layout, state["opt"])
  assert set(per_edge) == set(layout.graph.edge_names)
  merged = checkpoint_lib.merge_by_edge(layout, state["opt"], per_edge, shared)
  assert_trees_equal(merged, state["opt"])
  params_by_edge, _ = checkpoint_lib.split_by_edge(layout, state["params"])
  assert_trees_equal(params_by_edge, jax.device_get(full.edge_params()))
  # a wrong shape (another graph's dims) is named in the error
  broken = jax.tree.map(lambda x: x, params_by_edge)
  for edge in ("image->text", "audio->text"):  # both edges of the 6x8 bucket
    broken[edge]["out"]["kernel"] = np.zeros((16, 9), np.float32)
  with pytest.raises(
    errors.CheckpointError,
    match=r"item image->text: array out/kernel has shape \(16, 9\), "
    r"expected \(16, 8\)",
  ):
    checkpoint_lib.merge_by_edge(layout, state["params"], broken, {"globals": {}})
  del broken["image->text"]
  with pytest.raises(errors.CheckpointError, match="checkpoint lacks .* in its items"):
    checkpoint_lib.merge_by_edge(layout, state["params"], broken, {"globals": {}})


def test_merge_names_a_single_mis_shaped_edge(runs):
  layout = runs["full"].setup.layout
  state = jax.device_get(runs["full"].state)
  params_by_edge, _ = checkpoint_lib.split_by_edge(layout, state["params"])
  params_by_edge["image->text"]["out"]["kernel"] = np.zeros((16, 9), np.float32)
  with pytest.raises(errors.CheckpointError, match="image->text"):
    checkpoint_lib.merge_by_edge(layout, state["params"], params_by_edge, {"globals": {}})


def test_resume_across_edge_apply_settings(runs, tmp_path, digits_config_module, tri_modal_dataset):
  # model.edge_apply changes how stacked edges run, never the function: a safe resume change, and a
  # run written before the option existed (no model.edge_apply in its meta) resumes too
  work = str(tmp_path / "copy")
  shutil.copytree(runs["full_dir"], work)
  config = make_config(digits_config_module, 2 * N)
  config.model.edge_apply = "per_edge"
  result = trainer_lib.train(config, work, dataset=tri_modal_dataset, log=lambda _: None)
  assert result.steps_run == 0
  meta = {"config": identity_lib.config_dict(make_config(digits_config_module, 2 * N))}
  del meta["config"]["model"]["edge_apply"]
  assert identity_lib.run_differences(result.setup, config, None, meta) == []
  config.model.hidden = (7,)
  assert any(
    p.startswith("model.hidden")
    for p in identity_lib.run_differences(result.setup, config, None, meta)
  )
