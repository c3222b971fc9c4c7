"""The closed-form start of translators (a linear path at the ridge map of each edge's pairs, the
MLP a residual from zero), the rule that turns it on, and per-edge selection on held-back pairs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from graphbridge.core.graph import Edge, ModalityGraph
from graphbridge.data import readers as readers_lib
from graphbridge.linear import baselines as baselines_lib
from graphbridge.model import translators as tr
from graphbridge.training import closed_form, selection, setup as setup_lib
from graphbridge.training import trainer as trainer_lib
from graphbridge.training import loop as loop_lib

from conftest import load_config_module


def instance_arrays(seed=0, dims=(12, 9), n=120, pairs=40, relation="tanh") -> dict:
  """Two modalities of one instance each row (ids), `pairs` instance pairs on train rows."""
  rng = np.random.default_rng(seed)
  latent = rng.standard_normal((n, 6))
  a = latent @ rng.standard_normal((6, dims[0]))
  b = latent @ rng.standard_normal((6, dims[1]))
  if relation == "tanh":
    b = np.tanh(b)
  test = np.zeros(n, bool)
  test[-n // 4 :] = True
  rows = rng.permutation(np.nonzero(~test)[0])[:pairs]
  return {
    "a_emb": (a + 0.05 * rng.standard_normal(a.shape)).astype(np.float32),
    "b_emb": (b + 0.05 * rng.standard_normal(b.shape)).astype(np.float32),
    "a_id": np.arange(n),
    "b_id": np.arange(n),
    "a_test": test,
    "b_test": test,
    "pairs_a__b": np.stack([rows, rows], 1),
  }


def tiny_config(**overrides):
  c = load_config_module().get_config("tiny")
  c.train.tensorboard = False
  with c.unlocked():
    for key, value in overrides.items():
      node = c
      *path, last = key.split(".")
      for part in path:
        node = node[part]
      node[last] = value
  return c


def _translate(arch, d_out, params, x):
  return np.asarray(tr.Translator(d_out, arch).apply({"params": params}, np.asarray(x, np.float32)))


@pytest.mark.parametrize("dims,cap", [((12, 9), 32), ((40, 30), 8)])
def test_closed_form_start_is_the_ridge_map_before_any_step(dims, cap):
  """Full path (12x9 under cap 32) and factored path (rank 8 for 40x30) whose ridge map has rank
  <= 8 (9 pairs, centred: rank 8): the start is exactly ridge with the leave-one-out penalty."""
  ds = readers_lib.from_arrays(instance_arrays(dims=dims, pairs=9 if dims[0] == 40 else 40))
  pairs = ds.pairs_for("a", "b")
  arch = tr.TranslatorArch(hidden=(16,), layer_norm=True, linear=cap)
  assert (tr.linear_rank(*dims, cap) == 0) == (dims[0] == 12)
  params = tr.init_edge_params(Edge("a", "b"), dims[0], dims[1], arch, seed=3)
  start = closed_form.fit_start(ds, "a", "b", pairs)
  params = closed_form.start_params(params, arch, start)
  ridge = baselines_lib.fit_ridge_cv(
    ds.modalities["a"].emb[pairs[:, 0]], ds.modalities["b"].emb[pairs[:, 1]]
  )
  x = ds.modalities["a"].emb
  np.testing.assert_allclose(_translate(arch, dims[1], params, x), ridge.apply(x), atol=2e-4)
  assert start.alpha == baselines_lib.ridge_loo_alpha(
    ds.modalities["a"].emb[pairs[:, 0]], ds.modalities["b"].emb[pairs[:, 1]]
  )


def test_residual_starts_at_zero_and_old_archs_have_no_linear_path():
  arch = tr.TranslatorArch(hidden=(16,), linear=8)
  params = tr.init_edge_params(Edge("a", "b"), 6, 5, arch, seed=0)
  assert not np.any(np.asarray(params["out"]["kernel"])) and not np.any(params["out"]["bias"])
  x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
  linear = x @ np.asarray(params["linear"]["kernel"]) + np.asarray(params["linear"]["bias"])
  np.testing.assert_allclose(_translate(arch, 5, params, x), linear, atol=1e-5)
  # an arch saved before the linear path existed (no "linear" key) restores without one
  old = {"hidden": [16], "activation": "gelu", "layer_norm": False, "residual": False}
  assert tr.TranslatorArch.from_dict(old).linear == 0
  assert "linear" not in tr.TranslatorArch.from_dict(old).to_dict()
  assert tr.TranslatorArch.from_dict(arch.to_dict()) == arch
  assert "linear_in" in tr.init_edge_params(Edge("a", "b"), 40, 30, arch, 0)  # factored


def test_auto_reads_the_pairs():
  """Instance pairs: the linear path at the widest hidden layer; class-level pairs (the embedded
  digits set) and strategies with their own objective: none."""
  cfg = tiny_config()
  inst = readers_lib.from_arrays(instance_arrays())
  assert setup_lib.resolve_linear_rank(cfg.model, inst)[0] == max(cfg.model.hidden)
  assert setup_lib.resolve_linear_rank(cfg.model, inst, graph_plan=False)[0] == 0
  rank, why = setup_lib.resolve_linear_rank(cfg.model, readers_lib.load_digits())
  assert rank == 0 and "class-level" in why
  cfg.model.linear_rank = 0
  assert setup_lib.resolve_linear_rank(cfg.model, inst) == (0, "asked for")
  assert [selection.held_count(n) for n in (4, 10, 40, 160, 640, 2560, 100_000)] == [
    0,
    3,
    6,
    16,
    64,
    256,
    256,
  ]


def test_selection_keeps_the_start_where_training_cannot_help():
  """b is a linear function of a: no step beats the ridge start on the held-back pairs, so every
  edge ends at ridge refitted on all pairs (held-back ones included), and report.json's "bridge"
  says so."""
  arrays = instance_arrays(relation="linear", pairs=30)
  ds = readers_lib.from_arrays(arrays)
  cfg = tiny_config(**{"train.steps": 40, "train.select_every": 10})
  result = trainer_lib.train(cfg, None, dataset=ds, log=lambda m: None)
  edges = result.bridge["edges"]
  assert set(edges) == {"a->b", "b->a"} and all(e["held"] == 5 for e in edges.values())
  params = result.edge_params()
  pairs = ds.pairs_for("a", "b")
  for src, dst, cols in (("a", "b", (0, 1)), ("b", "a", (1, 0))):
    if edges[f"{src}->{dst}"]["kept"] == "trained":
      continue
    ridge = baselines_lib.fit_ridge_cv(
      ds.modalities[src].emb[pairs[:, cols[0]]], ds.modalities[dst].emb[pairs[:, cols[1]]]
    )
    x = ds.modalities[src].emb
    arch = result.setup.layout.arch_of(f"{src}->{dst}")
    got = _translate(arch, ds.modalities[dst].dim, params[f"{src}->{dst}"], x)
    np.testing.assert_allclose(got, ridge.apply(x), atol=2e-4)
  assert any(e["kept"] != "trained" for e in edges.values())


def test_holdout_is_the_same_every_round_and_never_trained_on():
  ds = readers_lib.from_arrays(instance_arrays(pairs=40))
  hold = selection.PairHoldout.choose(ds, seed=1)
  held = hold.held_for("a", "b")
  assert len(held) == 6 and np.array_equal(hold.held_for("b", "a"), held[:, ::-1])
  grown = readers_lib.from_arrays({**instance_arrays(pairs=40)})
  train = hold.without_held(grown)
  keys = {tuple(p) for p in train.pairs_for("a", "b")}
  assert len(keys) == 34 and not keys & {tuple(p) for p in held}
  assert np.array_equal(selection.PairHoldout.choose(ds, seed=1).held_for("a", "b"), held)


def test_decide_moves_only_where_the_t_test_says_so():
  sel = selection.EdgeSelector.__new__(selection.EdgeSelector)
  sel.edges = ("a->b", "b->a")
  start = np.array([0.5, 0.5, 0.5, 0.5])
  sel.history = {
    "a->b": {0: start, 25: start + np.array([0.4, 0.5, 0.3, 0.45])},  # clearly better
    "b->a": {0: start, 25: start + np.array([0.5, -0.4, 0.1, -0.1])},  # better on average only
  }
  sel.best_step = {"a->b": 25, "b->a": 25}
  chosen = sel.decide(0, confidence=0.95)
  assert chosen["a->b"].moved and not chosen["b->a"].moved
  assert sel.decide(0, confidence=0.0)["b->a"].moved
  assert abs(selection.t_quantile(0.95, 2) - 2.92) < 0.01


def test_average_precision_by_pair_and_by_label():
  sims = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
  by_pair = selection._average_precision(sims, np.array([[0, 0, 1], [1, 0, 0]], bool))
  np.testing.assert_allclose(by_pair, [1 / 2, 1 / 2])
  by_label = selection._average_precision(sims, np.array([[1, 0, 1], [1, 1, 0]], bool))
  np.testing.assert_allclose(by_label, [1.0, 1.0])


def test_loop_early_stop_saves_the_run_as_finished():
  saved = []
  state = {"step": np.int32(0)}

  def step(state, i):
    return {"step": np.int32(i + 1)}, {}

  class Quiet:
    def write_scalars(self, step, values):
      pass

    def flush(self):
      pass

    def close(self):
      pass

  result = loop_lib.run(
    state,
    0,
    loop_lib.Cadence(10, 1, 1, 0),
    step,
    values=lambda done, s, m: {},
    line=lambda v: "",
    writer=Quiet(),
    log=lambda m: None,
    save=lambda done, s: saved.append((done, int(s["step"]))),
    at_end=lambda s: {"step": np.int32(10)},
    early_stop=lambda done, s: done == 4,
  )
  assert result.steps_run == 4 and saved == [(10, 10)]


def test_graph_of_four_modalities_keeps_stacked_buckets():
  """Edges of equal shapes share a bucket; each edge's closed-form start lands in its own row."""
  rng = np.random.default_rng(0)
  graph = ModalityGraph.build({"a": 6, "b": 6, "c": 6})
  graph = graph.add_edges_both_ways("a", "b").add_edges_both_ways("b", "c")
  arch = tr.TranslatorArch(hidden=(8,), linear=8)
  layout = tr.EdgeLayout.build(graph, arch)
  assert len(layout.buckets) == 1 and layout.buckets[0].size == 4
  per_edge = tr.unstack(layout, tr.init_params(layout, 0))
  maps = {}
  for e in graph.edges:
    w, b = rng.standard_normal((6, 6)), rng.standard_normal(6)
    per_edge[e.name] = tr.set_linear_map(
      {
        **per_edge[e.name],
        "out": {k: np.zeros_like(v) for k, v in per_edge[e.name]["out"].items()},
      },
      b,
      kernel=w,
    )
    maps[e.name] = (w, b)
  stacked = tr.stack(layout, per_edge)
  x = rng.standard_normal((5, 6)).astype(np.float32)
  for name, (w, b) in maps.items():
    got = np.asarray(tr.apply_edge(layout, stacked, name, x))
    np.testing.assert_allclose(got, x @ w + b, atol=1e-4)


def test_a_resume_selects_as_an_uninterrupted_run(tmp_path):
  """Selection's scores and best params live in the checkpoint: a run resumed from a middle step
  (as after a kill -9) ends with the same params and the same choices as one that never stopped."""
  import shutil

  arrays = instance_arrays(relation="tanh", pairs=40)
  ds = readers_lib.from_arrays(arrays)
  cfg = tiny_config(
    **{
      "train.steps": 60,
      "train.select_every": 10,
      "train.select_patience": 0,
      "train.checkpoint_every": 30,
      "train.keep_checkpoints": 3,
    }
  )
  quiet = lambda m: None
  whole = trainer_lib.train(cfg, str(tmp_path / "whole"), dataset=ds, log=quiet)
  assert whole.bridge["edges"]
  trainer_lib.train(cfg, str(tmp_path / "cut"), dataset=ds, log=quiet)
  shutil.rmtree(tmp_path / "cut" / "checkpoints" / "60")  # as if killed after step 30's save
  resumed = trainer_lib.train(cfg, str(tmp_path / "cut"), dataset=ds, log=quiet)
  assert resumed.steps_run == 30
  assert resumed.bridge == whole.bridge
  for name, p in whole.edge_params().items():
    jax.tree.map(np.testing.assert_array_equal, resumed.edge_params()[name], p)
