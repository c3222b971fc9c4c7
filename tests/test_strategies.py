"""The strategy registry and each strategy's stages; C-MCR's two stages; compare; routes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from graphbridge.core import errors
from graphbridge.runs import validate as validate_lib
from graphbridge.model import objective as objective_lib
from graphbridge.model import objectives as objectives_lib
from graphbridge.strategies import pairwise as pairwise_lib
from graphbridge import strategies
from graphbridge import defaults
from graphbridge.strategies import base as base_lib
from graphbridge.training import setup as setup_lib
from graphbridge.training import optimizer as optimizer_lib
from graphbridge.core.graph import Edge, ModalityGraph
from graphbridge.core.errors import GraphError
from graphbridge.core.routes import best_route, parse_route
from graphbridge.runs import compare as compare_run


@pytest.fixture
def config(tiny_config):
  c = ml_collections.ConfigDict(tiny_config.to_dict())
  c.train.steps = 4
  c.train.log_every = 2
  c.train.print_every = 2
  c.train.checkpoint_every = 4
  c.train.tensorboard = False
  c.model.hidden = (8,)
  c.pairwise.dim = 8
  c.cmcr.dim = 8
  c.cmcr.common_dim = 8
  c.cmcr.memory_size = 8
  c.data.batch_size = 8
  return c


def _with(config, **fields):
  return base_lib.with_overrides(config, {k.replace("__", "."): v for k, v in fields.items()})


# ---- registry ----------------------------------------------------------------------------------


def test_registry_lists_the_four_strategies_and_config_check_uses_it():
  assert strategies.names()[:4] == ("graph", "pivot", "pairwise", "cmcr")
  bad = ml_collections.ConfigDict({**defaults.base_config().to_dict(), "strategy": "clap"})
  with pytest.raises(
    errors.ConfigError, match="strategy='clap' is not one of: graph, pivot, pairwise, cmcr, dmvae"
  ):
    validate_lib.validate(bad)
  with pytest.raises(errors.ConfigError, match="choices: graph, pivot, pairwise, cmcr"):
    strategies.get("clap")
  with pytest.raises(ValueError, match="already registered"):
    strategies.register(strategies.get("graph"))


def test_with_overrides_rejects_unknown_fields(config):
  assert base_lib.with_overrides(config, {"loss.infonce": 2.0}).loss.infonce == 2.0
  assert config.loss.infonce != 2.0  # a copy
  with pytest.raises(errors.ConfigError, match="loss.infonse"):
    base_lib.with_overrides(config, {"loss.infonse": 1.0})


# ---- each strategy's stages (no training) -------------------------------------------------------


def test_graph_stage_is_the_config_graph(config, tri_modal_dataset):
  (stage,) = strategies.get("graph").plan(_with(config, strategy="graph"), tri_modal_dataset)
  assert stage.graph.edge_names == tri_modal_dataset.default_graph().edge_names
  assert stage.objective is None and not stage.overrides


def test_pivot_stage_binds_into_the_most_paired_modality(config, tri_modal_dataset):
  (stage,) = strategies.get("pivot").plan(_with(config, strategy="pivot"), tri_modal_dataset)
  assert sorted(stage.graph.edge_names) == ["audio->text", "image->text"]
  assert stage.overrides["loss.cycle_weights"] == (0.0,) and stage.overrides["finetune.steps"] == 0
  with pytest.raises(GraphError, match="no pairs for audio"):
    strategies.get("pivot").plan(
      _with(config, strategy="pivot", pivot__modality="image"), tri_modal_dataset
    )


def test_pairwise_stage_meets_in_a_virtual_space(config, tri_modal_dataset):
  (stage,) = strategies.get("pairwise").plan(_with(config, strategy="pairwise"), tri_modal_dataset)
  assert stage.graph.dims[pairwise_lib.SHARED_NODE] == 8
  setup = setup_lib.build_setup(
    _with(config, **{k.replace(".", "__"): v for k, v in stage.overrides.items()}),
    tri_modal_dataset,
    graph=stage.graph,
    objective=stage.objective,
  )
  assert isinstance(setup.plan, objective_lib.Objective)
  assert len(setup.plan.terms) == len(tri_modal_dataset.pairs)
  assert setup.plan.cycles == ()


def test_cmcr_stages_freeze_stage_one(config, tri_modal_dataset):
  first, second = strategies.get("cmcr").plan(
    _with(config, strategy="cmcr", cmcr__stage1_steps=3), tri_modal_dataset
  )
  assert first.subdir == "stage1" and first.overrides["train.steps"] == 3
  assert second.freeze_stages == (0,)
  assert set(first.graph.edge_names) < set(second.graph.edge_names)
  assert {"space_image->common", "space_audio->common"} == set(second.graph.edge_names) - set(
    first.graph.edge_names
  )
  with pytest.raises(GraphError, match="set cmcr.shared"):
    strategies.get("cmcr").plan(
      _with(config, strategy="cmcr", cmcr__shared="image"), tri_modal_dataset
    )


# ---- objective interface ------------------------------------------------------------------------


def test_finetune_keeps_every_weight_key(config, tri_modal_dataset):
  setup = setup_lib.build_setup(config, tri_modal_dataset)

  class WithExtraWeight:  # a plan with one more weight than the graph plan knows about
    def initial_weights(self):
      return {**setup.plan.initial_weights(), "extra": jnp.float32(0.25)}

    finetune_weights = staticmethod(objectives_lib.finetune_weights)

  ft = _with(config, finetune__steps=2, finetune__infonce=3.0)
  main = optimizer_lib.phase_weights(ft, WithExtraWeight(), int(ft.train.steps) - 1)
  tuned = optimizer_lib.phase_weights(ft, WithExtraWeight(), int(ft.train.steps))
  assert float(main["infonce"]) == pytest.approx(config.loss.infonce)
  assert float(tuned["infonce"]) == 3.0 and float(tuned["extra"]) == 0.25
  assert jax.tree.structure(main) == jax.tree.structure(tuned)


# ---- training through the registry (a few steps) ------------------------------------------------


def test_cmcr_run_trains_both_stages_and_keeps_stage_one_frozen(
  config, tri_modal_dataset, tmp_path
):
  run = strategies.get("cmcr").train(
    _with(config, strategy="cmcr"), tri_modal_dataset, str(tmp_path), log=lambda m: None
  )
  first, second = run.results
  assert (tmp_path / "stage1" / "checkpoints").is_dir() and (tmp_path / "checkpoints").is_dir()
  stage1_params, stage2_params = first.edge_params(), second.edge_params()
  for edge in first.setup.graph.edge_names:
    jax.tree.map(np.testing.assert_array_equal, stage1_params[edge], stage2_params[edge])
  assert {e.name for e in second.setup.layout.frozen} == set(first.setup.graph.edge_names)
  assert run.aligner.default_route("image", "audio") is not None


def test_compare_one_seed(config, tri_modal_dataset, tmp_path, monkeypatch):
  c = _with(
    config,
    compare__strategies="pivot,pairwise",
    compare__seeds=1,
    compare__posthoc="none",
    compare__baselines="ridge",
  )
  seen = {}
  pytest.importorskip("matplotlib")
  from graphbridge.evaluation.plots import style as style_lib

  real_save = style_lib.save_figure

  def capture(fig, path):  # compare.png: its title and its error bars
    (ax, *_) = fig.axes
    seen["title"] = ax.get_title()
    seen["errorbars"] = [c for c in ax.collections if (c.get_gid() or "").startswith("std:")]
    return real_save(fig, path)

  monkeypatch.setattr(style_lib, "save_figure", capture)
  result = compare_run.compare(c, str(tmp_path), dataset=tri_modal_dataset, log=lambda m: None)
  methods = [t["method"] for t in result["table"]]
  assert methods == ["pivot", "pairwise", "linear-ridge"]
  assert result["zero_shot_pairs"] == ["audio->image", "image->audio"]
  assert (tmp_path / "compare.md").is_file() and (tmp_path / "compare.png").is_file()
  # the data set, the split and the seed in the title; one seed: no spread, no error bar
  title = seen["title"].replace("\n", " ")
  assert "<synthetic tri-modal>, test split" in title and "seed 0" in title
  assert seen["errorbars"] == []
  with pytest.raises(errors.ConfigError, match="compare.strategies names 'clip'"):
    compare_run.compare(_with(c, compare__strategies="clip"), None, dataset=tri_modal_dataset)


# ---- routes -------------------------------------------------------------------------------------


def test_routes_parse_and_best():
  g = ModalityGraph.build({"image": 4, "text": 4, "audio": 4})
  for e in ("image->text", "text->image", "audio->text", "text->audio"):
    g = g.add_edge(e)
  r = parse_route(g, "image->text<-audio")
  assert (r.query, r.gallery, r.meet, r.hops, r.name) == (
    "image",
    "audio",
    "text",
    2,
    "image->text<-audio",
  )
  assert best_route(g, "image", "audio").name == "image->text<-audio"  # shorter longest side
  assert best_route(g, "image", "text").name == "image->text"
  with pytest.raises(GraphError):
    parse_route(g, "image->audio")
  with pytest.raises(GraphError):
    parse_route(g, "image->text<-audio->text")
  lonely = g.add_node("depth", 4)
  assert best_route(lonely, "depth", "image") is None
  assert Edge.parse("image->text") in g.edges
