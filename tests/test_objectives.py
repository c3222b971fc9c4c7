"""Tests for graphbridge.objectives: the stacked, prefix-sharing loss against a plain per-edge
loop."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from graphbridge.data import sampling as sampling_lib
from graphbridge.model import objectives as objectives_lib
from graphbridge.training import setup as setup_lib
from graphbridge.training import state as state_lib
from graphbridge.training import optimizer as optimizer_lib
from graphbridge.training import step as step_lib
from graphbridge.model import translators as translators_lib
from graphbridge.core.errors import GraphError
from graphbridge.core.graph import ModalityGraph, path_edges, path_name

# On the tri-modal set (image[6], audio[6], text[8]; pairs image<->text, audio<->text) plus the
# unpaired edges image<->audio: image->text and audio->text share the 6x8 bucket, image->audio and
# audio->image the 6x6 bucket; 2- and 3-cycles through all three modalities. text->audio is frozen
# (paired, so it also tests that a frozen edge gets no supervised term but still takes part in
# cycles).
EXTRA_EDGES = "image->audio,audio->image"
FROZEN_EDGE = "text->audio"
BATCH = 8


# --------------------------------------------------------------------------- the reference


def _unit(x):
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-16))


def reference_cosine_loss(pred, target):
  """1 - mean over rows of cos(pred_i, target_i)."""
  return 1.0 - jnp.mean(jnp.sum(_unit(pred) * _unit(target), axis=-1))


def reference_infonce(pred, target, labels, inv_temperature):
  """Symmetric InfoNCE with label-aware positives, written as KL(uniform over positives || softmax).

  pred, target: [B, d]; labels: [B]. Rows i, j with labels[i] == labels[j] are positives."""
  logits = (_unit(pred) @ _unit(target).T) * inv_temperature
  positive = labels[:, None] == labels[None, :]

  def kl(axis):
    q = positive / jnp.sum(positive, axis=axis, keepdims=True)
    log_p = logits - jax.scipy.special.logsumexp(logits, axis=axis, keepdims=True)
    safe_log_q = jnp.log(jnp.where(positive, q, 1.0))
    return jnp.sum(jnp.where(positive, q * (safe_log_q - log_p), 0.0), axis=axis)

  return 0.5 * (jnp.mean(kl(1)) + jnp.mean(kl(0)))


def reference_loss(
  graph,
  arch,
  supervised,
  cycles,
  n_lengths,
  learn_temperature,
  temperature,
  edge_params,
  globals_,
  frozen_edge_params,
  batch,
  weights,
):
  """The whole objective as a plain Python loop over edges and cycles, one edge at a time."""
  everything = {**frozen_edge_params, **edge_params}

  def translate(edge, x):
    dst = edge.split("->")[1]
    return translators_lib.Translator(graph.dim(dst), arch).apply({"params": everything[edge]}, x)

  if learn_temperature:
    inv_t = jnp.minimum(jnp.exp(globals_["log_inv_temperature"]), 100.0)
  else:
    inv_t = 1.0 / temperature
  total = 0.0
  if supervised:
    cos_terms, nce_terms = [], []
    for edge in supervised:
      pred = translate(edge, batch["src"][edge])
      target = batch["dst"][edge]
      cos_terms.append(reference_cosine_loss(pred, target))
      nce_terms.append(reference_infonce(pred, target, batch["pair_label"][edge], inv_t))
    total += weights["edge_cos"] * sum(cos_terms) / len(cos_terms)
    total += weights["infonce"] * sum(nce_terms) / len(nce_terms)
  by_length = {}
  for cycle in cycles:
    start = batch["start"][cycle[0]]
    x = start
    for edge in path_edges(cycle):
      x = translate(edge.name, x)
    by_length.setdefault(len(cycle) - 1, []).append(reference_cosine_loss(x, start))
  for length, terms in by_length.items():
    assert length - 2 < n_lengths
    total += weights["cycle"][length - 2] * sum(terms) / len(terms)
  return total


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def graph_case(tri_modal_dataset, digits_config_module):
  dataset = tri_modal_dataset
  config = digits_config_module.get_config("tiny")
  config.data.batch_size = BATCH
  config.model.hidden = (16,)
  config.model.layer_norm = True
  config.model.residual = True  # 6->8 edges get a skip Dense, 6->6 an identity skip
  config.graph.extra_edges = EXTRA_EDGES
  config.graph.frozen = FROZEN_EDGE
  config.loss.cycle_weights = (0.5, 0.25)
  config.loss.learn_temperature = True
  setup = setup_lib.build_setup(config, dataset)
  return dataset, config, setup


def test_reference_infonce_is_clip_when_labels_are_distinct():
  rng = np.random.default_rng(0)
  pred, target = (
    rng.normal(size=(6, 5)).astype(np.float32),
    rng.normal(size=(6, 5)).astype(np.float32),
  )
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  logits = unit(pred) @ unit(target).T / 0.1
  log_softmax = lambda z, axis: z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
  clip = 0.5 * (
    -np.mean(np.diag(log_softmax(logits, 1))) - np.mean(np.diag(log_softmax(logits, 0)))
  )
  infonce = jax.jit(reference_infonce)
  idx = np.arange(6)
  np.testing.assert_allclose(infonce(pred, target, idx, 10.0), clip, rtol=1e-5)
  # with shared labels the KL form is 0 when each row's scores are equal over its positives
  labels = np.array([0, 0, 1, 1, 2, 2])
  same = np.eye(5, dtype=np.float32)[labels]  # rows of a class are identical
  assert float(infonce(same, same, labels, 50.0)) < 1e-6
  np.testing.assert_allclose(infonce(same, same, idx, 50.0), np.log(2.0), rtol=1e-4)  # twins tie


def test_stacked_loss_and_grads_equal_a_plain_per_edge_loop(graph_case):
  dataset, config, setup = graph_case
  layout, plan = setup.layout, setup.plan
  graph = layout.graph
  arch = layout.arch_of("image->text")  # as the setup resolved it (the data is class-level)

  # the case is one where stacking matters: two buckets hold two edges each
  assert sorted(b.size for b in layout.buckets) == [1, 1, 2, 2]
  assert layout.where("image->text")[0] == layout.where("audio->text")[0]
  assert layout.where("image->audio")[0] == layout.where("audio->image")[0]
  assert layout.where(FROZEN_EDGE)[0].endswith("-frozen")

  # what the plan should contain, derived independently
  trainable = {e.name for e in graph.edges} - {FROZEN_EDGE}
  supervised = [
    e.name for e in graph.edges if e.name in trainable and len(dataset.pairs_for(e.src, e.dst)) > 0
  ]
  cycles = [c for c in graph.cycles(3) if any(e.name in trainable for e in path_edges(c))]
  assert sorted(supervised) == ["audio->text", "image->text", "text->image"]
  assert len(cycles) == 12 and {len(c) - 1 for c in cycles} == {2, 3}
  assert ("text", "audio", "text") in cycles and ("image", "text", "audio", "image") in cycles
  names = plan.term_names()
  assert sorted(names["edge_cos"]) == sorted(supervised)
  assert sorted(names["cycle"]) == sorted(path_name(c) for c in cycles)

  tx = optimizer_lib.make_optimizer(config)
  state = state_lib.init_state(
    setup, tx, seed=3, weights=objectives_lib.initial_weights(plan.settings)
  )
  params = jax.device_get(state["params"])  # numpy: unstacking it below compiles nothing
  params["globals"]["log_inv_temperature"] = np.float32(np.log(12.5))
  assert set(params["globals"]) == {"log_inv_temperature"}
  all_stacked = jax.device_get(translators_lib.init_params(layout, seed=7))
  frozen = {b.key: all_stacked[b.key] for b in layout.frozen_buckets}
  frozen_edge_params = translators_lib.unstack(layout, frozen)
  assert set(frozen_edge_params) == {FROZEN_EDGE}
  weights = {
    "edge_cos": jnp.float32(0.8),
    "infonce": jnp.float32(0.3),
    "cycle": jnp.asarray([0.5, 0.25], jnp.float32),
  }

  stacked_fn = jax.jit(
    jax.value_and_grad(
      lambda p, batch: objectives_lib.loss_fn(plan, p, frozen, batch, weights, jnp.float32)[0]
    )
  )

  def plain(edge_params, globals_, batch):
    return reference_loss(
      graph,
      arch,
      supervised,
      cycles,
      len(config.loss.cycle_weights),
      config.loss.learn_temperature,
      config.loss.temperature,
      edge_params,
      globals_,
      frozen_edge_params,
      batch,
      weights,
    )

  plain_fn = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))

  arrays = step_lib.sampler_arrays(setup, dataset)
  sample = jax.jit(sampling_lib.sample_batch, static_argnums=2)
  for seed in (0, 1):
    batch = sample(arrays, jax.random.PRNGKey(seed), BATCH)
    labels = np.asarray(batch["pair_label"]["image->text"])
    assert len(np.unique(labels)) < len(labels)  # label-aware positives are exercised

    total, grads = stacked_fn(params, batch)
    ref_total, (ref_edge_grads, ref_global_grads) = plain_fn(
      translators_lib.unstack(layout, params["edges"]), params["globals"], batch
    )
    assert 0.5 < float(total) < 20.0
    np.testing.assert_allclose(total, ref_total, rtol=1e-5, atol=1e-5)

    edge_grads = translators_lib.unstack(layout, jax.device_get(grads["edges"]))
    assert set(edge_grads) == trainable == set(ref_edge_grads)
    for edge in sorted(trainable):
      leaves = jax.tree_util.tree_leaves_with_path(edge_grads[edge])
      ref_leaves = dict(jax.tree_util.tree_leaves_with_path(ref_edge_grads[edge]))
      assert len(leaves) == len(ref_leaves)
      for path, g in leaves:
        np.testing.assert_allclose(
          g, ref_leaves[path], rtol=1e-5, atol=1e-5, err_msg=f"{edge} {jax.tree_util.keystr(path)}"
        )
      norm = np.sqrt(sum(float(np.sum(np.square(g))) for _, g in leaves))
      assert norm > 1e-4, f"edge {edge} gets no gradient"
    np.testing.assert_allclose(
      grads["globals"]["log_inv_temperature"],
      ref_global_grads["log_inv_temperature"],
      rtol=1e-5,
      atol=1e-5,
    )
    assert abs(float(grads["globals"]["log_inv_temperature"])) > 1e-5


def test_loss_terms_are_reported_per_edge_and_cycle(graph_case):
  dataset, config, setup = graph_case
  plan = setup.plan
  tx = optimizer_lib.make_optimizer(config)
  state = state_lib.init_state(
    setup, tx, seed=0, weights=objectives_lib.initial_weights(plan.settings)
  )
  batch = jax.jit(sampling_lib.sample_batch, static_argnums=2)(
    step_lib.sampler_arrays(setup, dataset), jax.random.PRNGKey(0), BATCH
  )
  frozen = {
    b.key: translators_lib.init_params(setup.layout, seed=0)[b.key]
    for b in setup.layout.frozen_buckets
  }
  zero = {
    "edge_cos": jnp.float32(0.0),
    "infonce": jnp.float32(0.0),
    "cycle": jnp.asarray([1.0, 0.0]),
  }
  total, aux = jax.jit(lambda p, b: objectives_lib.loss_fn(plan, p, frozen, b, zero, jnp.float32))(
    state["params"], batch
  )
  names = plan.term_names()
  assert aux["terms"]["edge_cos"].shape == (len(names["edge_cos"]),)
  assert aux["terms"]["cycle"].shape == (len(names["cycle"]),)
  cycle = np.asarray(aux["terms"]["cycle"])
  lengths = np.asarray([name.count("->") for name in names["cycle"]])
  # only 2-cycles weighted: the total is the mean 2-cycle term
  np.testing.assert_allclose(total, cycle[lengths == 2].mean(), rtol=1e-6)
  np.testing.assert_allclose(
    aux["cycle_by_length"], [cycle[lengths == 2].mean(), cycle[lengths == 3].mean()], rtol=1e-6
  )
  assert np.all((cycle > 0) & (cycle < 2))


# --------------------------------------------------------------------------- the plan


def complete_layout(names=("a", "b", "c"), dims=(4, 4, 6)):
  graph = ModalityGraph.build(
    dict(zip(names, dims)), [f"{x}->{y}" for x, y in itertools.permutations(names, 2)]
  )
  return translators_lib.EdgeLayout.build(graph, translators_lib.TranslatorArch(hidden=(8,)))


def test_plan_shares_cycle_prefixes():
  layout = complete_layout()
  graph = layout.graph
  settings = objectives_lib.LossSettings(cycle_weights=(0.5, 0.25))
  plan = objectives_lib.build_plan(layout, settings, paired_edges=graph.edges)
  # By hand: 6 supervised edges (one application each, on pair rows). Cycles from start a:
  # hop 1: a->b, a->c (2); hop 2: a->b->a, a->b->c, a->c->a, a->c->b (4); hop 3: a->b->c->a,
  # a->c->b->a (2) = 8 distinct prefixes per start, 24 for 3 starts. Total 6 + 24 = 30.
  # Naive (every cycle recomputed from scratch): 6 + 6 two-cycles * 2 + 6 three-cycles * 3 = 36.
  assert len(plan.cycles) == 12 and sorted(plan.cycle_lengths) == [2] * 6 + [3] * 6
  prefixes = {c[: k + 1] for c in plan.cycles for k in range(1, len(c))}
  assert len(prefixes) == 24
  assert plan.applications == 30
  naive = len(graph.edges) + sum(plan.cycle_lengths)
  assert naive == 36 and plan.applications < naive
  assert len(plan.levels) == 3  # one level per hop of the longest cycle


def test_plan_with_two_cycles_only_and_partial_pairs():
  layout = complete_layout()
  settings = objectives_lib.LossSettings(cycle_weights=(0.5,))
  plan = objectives_lib.build_plan(layout, settings, paired_edges=["a->b", "b->a"])
  assert [e.name for e in plan.supervised] == ["a->b", "b->a"]
  assert len(plan.cycles) == 6 and set(plan.cycle_lengths) == {2}
  assert plan.applications == 2 + 6 * 2  # 2-cycles share nothing
  off = objectives_lib.build_plan(
    layout, objectives_lib.LossSettings(cycle_weights=(0.0, 0.5)), paired_edges=["a->b"]
  )
  assert set(off.cycle_lengths) == {3} and len(off.cycles) == 6


def test_plan_skips_terms_without_trainable_edges():
  graph = complete_layout().graph
  layout = translators_lib.EdgeLayout.build(
    graph, translators_lib.TranslatorArch(hidden=(8,)), frozen=["a->b", "b->a"]
  )
  plan = objectives_lib.build_plan(
    layout, objectives_lib.LossSettings(cycle_weights=(0.5,)), paired_edges=graph.edges
  )
  assert "a->b" not in {e.name for e in plan.supervised}
  assert ("a", "b", "a") not in plan.cycles and ("b", "a", "b") not in plan.cycles
  assert ("a", "c", "a") in plan.cycles


def test_plan_errors():
  layout = complete_layout()
  graph = layout.graph
  with pytest.raises(
    GraphError, match="edge b->c is asked for a supervised loss but has no training pairs"
  ):
    objectives_lib.build_plan(
      layout, objectives_lib.LossSettings(supervised_edges=("a->b", "b->c")), paired_edges=["a->b"]
    )
  all_frozen = translators_lib.EdgeLayout.build(
    graph, translators_lib.TranslatorArch(hidden=(8,)), frozen=graph.edge_names
  )
  with pytest.raises(GraphError, match="nothing to train"):
    objectives_lib.build_plan(all_frozen, objectives_lib.LossSettings(), paired_edges=graph.edges)
  with pytest.raises(GraphError, match="nothing to train"):
    objectives_lib.build_plan(
      layout, objectives_lib.LossSettings(cycle_weights=(0.0,)), paired_edges=()
    )


def test_initial_weights_and_max_cycle_length():
  settings = objectives_lib.LossSettings(edge_cos=0.7, infonce=0.2, cycle_weights=(0.5, 0.0, 0.1))
  assert settings.max_cycle_length == 4
  w = objectives_lib.initial_weights(settings)
  assert float(w["edge_cos"]) == pytest.approx(0.7) and float(w["infonce"]) == pytest.approx(0.2)
  np.testing.assert_allclose(w["cycle"], [0.5, 0.0, 0.1])
  assert objectives_lib.LossSettings(cycle_weights=(0.0, 0.0)).max_cycle_length == 0
