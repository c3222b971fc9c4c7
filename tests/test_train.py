"""Tests for graphbridge.training: the step lowers the loss, traces once, and stops on non-finite
values."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from graphbridge.data import sampling as sampling_lib
from graphbridge.core import errors
from graphbridge.training import setup as setup_lib
from graphbridge.training import state as state_lib
from graphbridge.training import step as step_lib
from graphbridge.training import optimizer as optimizer_lib
from graphbridge.core.errors import GraphError


@pytest.fixture(scope="module")
def config(digits_config_module):
  config = digits_config_module.get_config("tiny")
  config.model.hidden = (16,)
  config.data.batch_size = 16
  return config


@pytest.fixture(scope="module")
def setup(config, tri_modal_dataset):
  return setup_lib.build_setup(config, tri_modal_dataset)


@pytest.fixture(scope="module")
def tx(config):
  return optimizer_lib.make_optimizer(config)


@pytest.fixture(scope="module")
def arrays(setup, tri_modal_dataset):
  return jax.device_put(step_lib.sampler_arrays(setup, tri_modal_dataset))


@pytest.fixture(scope="module")
def sample(setup):
  return jax.jit(sampling_lib.sample_batch, static_argnums=2)


@pytest.fixture(scope="module")
def device_step(setup, tx):
  return step_lib.make_device_step(setup, tx)


@pytest.fixture(scope="module")
def traced_once_step(setup, tx):
  """The pure step, jitted by us, that fails if it is ever traced a second time."""
  return jax.jit(chex.assert_max_traces(step_lib.make_step_fn(setup, tx), n=1))


def fresh_state(setup, tx, config, seed=0):
  return state_lib.init_state(
    setup, tx, seed, optimizer_lib.phase_weights(config, setup.plan.settings, 0)
  )


def test_setup_from_config(setup):
  graph = setup.graph
  assert set(graph.edge_names) == {"image->text", "text->image", "audio->text", "text->audio"}
  assert sorted(e.name for e in setup.plan.supervised) == sorted(graph.edge_names)
  assert len(setup.plan.cycles) == 4  # 2-cycles only in the tiny config
  assert setup.batch_size == 16
  # image and audio have the same dim here, so their edges to and from text are stacked
  assert sorted(b.size for b in setup.layout.buckets) == [2, 2]


def test_device_steps_lower_the_loss(setup, tx, config, arrays, device_step):
  step_fn = device_step
  state = fresh_state(setup, tx, config)
  losses, infonce = [], []
  for _ in range(30):
    state, metrics = step_fn(state, {}, arrays)
    losses.append(float(metrics["loss/total"]))
    infonce.append(float(np.mean(metrics["terms"]["infonce"])))
  assert int(state["step"]) == 30
  assert np.all(np.isfinite(losses))
  first, last = np.mean(losses[:3]), np.mean(losses[-3:])
  assert last < 0.8 * first, (first, last, losses)
  assert np.mean(infonce[-3:]) < np.mean(infonce[:3])
  assert int(state["health"]["bad_step"]) == -1
  step_lib.raise_if_unhealthy(setup, state["health"])  # healthy: no error


def test_device_sampler_is_deterministic_per_step(setup, tx, config, arrays, device_step):
  """Two runs from the same seed give bit-identical params (the batch key is fold_in(rng, step))."""
  step_fn = device_step
  results = []
  for _ in range(2):
    state = fresh_state(setup, tx, config)
    for _ in range(3):
      state, _ = step_fn(state, {}, arrays)
    results.append(jax.device_get(state["params"]))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_array_equal(a, b)
  other = fresh_state(setup, tx, config, seed=1)
  other, _ = step_fn(other, {}, arrays)
  assert not np.allclose(jax.tree.leaves(other["params"])[0], jax.tree.leaves(results[0])[0])


def test_step_traces_once(setup, tx, config, arrays, sample, traced_once_step):
  state = fresh_state(setup, tx, config)
  losses = []
  for seed in range(4):
    batch = sample(arrays, jax.random.PRNGKey(seed), setup.batch_size)
    state, metrics = traced_once_step(state, {}, batch)
    losses.append(float(metrics["loss/total"]))
  assert int(state["step"]) == 4
  assert len(set(losses)) == 4 and np.all(np.isfinite(losses))  # really different batches
  # new loss weights (e.g. the fine-tuning phase) are state, not structure: still no retrace
  finetune = config.copy_and_resolve_references()
  finetune.finetune.steps = 5
  weights = optimizer_lib.phase_weights(finetune, setup.plan.settings, int(finetune.train.steps))
  assert float(weights["edge_cos"]) == 0.0 and float(weights["infonce"]) == 1.0
  state, metrics = traced_once_step({**state, "weights": weights}, {}, batch)
  np.testing.assert_allclose(metrics["loss/total"], np.mean(metrics["terms"]["infonce"]), rtol=1e-5)
  # the guard does fire on a real retrace (a new batch size)
  with pytest.raises(AssertionError, match="traced > 1 times"):
    traced_once_step(state, {}, sample(arrays, jax.random.PRNGKey(0), 8))


def test_non_finite_batch_skips_the_update_and_names_the_edge(
  setup, tx, config, arrays, sample, traced_once_step
):
  state = fresh_state(setup, tx, config)
  good = sample(arrays, jax.random.PRNGKey(0), setup.batch_size)
  state, _ = traced_once_step(state, {}, good)
  bad = jax.tree.map(lambda x: x, good)
  bad["src"]["image->text"] = bad["src"]["image->text"].at[3, 0].set(np.nan)
  before = jax.device_get(state)
  after, metrics = traced_once_step(state, {}, bad)
  after = jax.device_get(after)
  assert not np.isfinite(float(metrics["loss/total"]))
  assert int(after["step"]) == 2 and int(after["health"]["bad_step"]) == 1
  for a, b in zip(
    jax.tree.leaves(after["params"]) + jax.tree.leaves(after["opt"]),
    jax.tree.leaves(before["params"]) + jax.tree.leaves(before["opt"]),
  ):
    np.testing.assert_array_equal(a, b)  # the bad update was skipped
  with pytest.raises(
    errors.NonFiniteError,
    match=r"step 2: non-finite loss term\(s\): edge_cos image->text, infonce image->text; "
    r"non-finite gradient for edge\(s\): image->text \(the update was skipped",
  ):
    step_lib.raise_if_unhealthy(setup, after["health"])
  # the record keeps the first bad step even after good steps
  later, _ = traced_once_step(after, {}, good)
  assert int(later["health"]["bad_step"]) == 1


def test_phase_weights(config, setup):
  ft = config.copy_and_resolve_references()
  ft.finetune.steps = 10
  ft.finetune.cycle_scale = 0.5
  settings = setup.plan.settings
  main = optimizer_lib.phase_weights(ft, settings, int(ft.train.steps) - 1)
  assert float(main["edge_cos"]) == pytest.approx(config.loss.edge_cos)
  assert float(main["infonce"]) == pytest.approx(config.loss.infonce)
  np.testing.assert_allclose(main["cycle"], config.loss.cycle_weights)
  tuned = optimizer_lib.phase_weights(ft, settings, int(ft.train.steps))
  assert float(tuned["edge_cos"]) == 0.0 and float(tuned["infonce"]) == 1.0
  np.testing.assert_allclose(tuned["cycle"], np.asarray(config.loss.cycle_weights) * 0.5)
  assert jax.tree.structure(main) == jax.tree.structure(tuned)


def test_config_errors(config, tri_modal_dataset):
  bad = config.copy_and_resolve_references()
  bad.optim.name = "lion"
  with pytest.raises(
    errors.ConfigError, match=r"optim.name='lion': choose one of adam, adamw, sgd"
  ):
    optimizer_lib.make_optimizer(bad)
  bad = config.copy_and_resolve_references()
  bad.loss.infonce_positives = "row"
  with pytest.raises(
    errors.ConfigError, match="infonce_positives='row': choose 'auto', 'label' or 'pair'"
  ):
    setup_lib.build_setup(bad, tri_modal_dataset)
  bad = config.copy_and_resolve_references()
  bad.graph.extra_edges = "image->depth"
  with pytest.raises(GraphError, match="unknown modality 'depth'"):
    setup_lib.build_setup(bad, tri_modal_dataset)
  bad = config.copy_and_resolve_references()
  bad.loss.supervised_edges = "image->text,image->audio"
  bad.graph.extra_edges = "image->audio"
  with pytest.raises(
    errors.ConfigError,
    match="loss.supervised_edges names image->audio, but the data has no train pairs",
  ):
    setup_lib.build_setup(bad, tri_modal_dataset)
  bad = config.copy_and_resolve_references()
  bad.model.compute_dtype = "float64x"
  with pytest.raises(ValueError, match="unknown compute dtype 'float64x'"):
    setup_lib.build_setup(bad, tri_modal_dataset)


def test_graph_from_config_edges_and_extra_edges(config, tri_modal_dataset):
  cfg = config.copy_and_resolve_references()
  cfg.graph.edges = "image->text,text->audio"
  cfg.graph.extra_edges = "audio->image"
  cfg.loss.cycle_weights = (0.0, 0.5)
  setup = setup_lib.build_setup(cfg, tri_modal_dataset)
  assert setup.graph.edge_names == ("image->text", "audio->image", "text->audio")
  assert [e.name for e in setup.plan.supervised] == ["image->text", "text->audio"]
  assert {c[0] for c in setup.plan.cycles} == {"image", "audio", "text"}
  assert set(setup.plan.cycle_lengths) == {3}
