"""docs/extending.md, executed: a toy strategy, a toy loss term and a toy report table, each added
from this file (no library file touched), run end to end on a tiny config."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from graphbridge import config_check
from graphbridge import evaluators
from graphbridge import experiment
from graphbridge import objective_api
from graphbridge import objectives
from graphbridge import strategies
from graphbridge import train as train_lib


# ---- recipe 2: a loss term ----------------------------------------------------------------------

class NormPenaltyPlan:
  """The translator graph's loss plan plus one term: the sum of squares of the trainable
  translators' parameters (weight "norm"; kept through fine-tuning)."""

  def __init__(self, plan: objectives.LossPlan, weight: float):
    self.plan, self.weight = plan, weight

  def __getattr__(self, name):  # everything else is the graph plan's
    return getattr(self.plan, name)

  def term_names(self):
    return {**self.plan.term_names(), "norm": ["all pair terms"]}

  def describe(self):
    return self.plan.describe() + f"; norm penalty {self.weight}"

  def initial_weights(self):
    return {**self.plan.initial_weights(), "norm": jnp.float32(self.weight)}

  def finetune_weights(self, weights, finetune):
    return objectives.finetune_weights(weights, finetune)  # "norm" passes through unchanged

  def loss(self, params, frozen, batch, weights, key, dtype):
    total, aux = self.plan.loss(params, frozen, batch, weights, key, dtype)
    norm = sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params["edges"]))[None]
    return total + weights["norm"] * norm[0], {**aux, "terms": {**aux["terms"], "norm": norm}}


# ---- recipe 1: a strategy -----------------------------------------------------------------------

def _star_stages(config, dataset):
  """Every modality translated into the most paired one (one direction only), with the norm penalty."""
  hub = strategies.choose_pivot(dataset)
  graph = strategies.base.build_graph(dataset, [f"{m}->{hub}" for m in dataset.names if m != hub])

  def objective(layout, ds, cfg):
    paired = [e for e in layout.graph.edges if len(ds.pairs_for(e.src, e.dst))]
    plan = objectives.build_plan(layout, train_lib.loss_settings_from_config(cfg.loss), paired)
    return NormPenaltyPlan(plan, weight=1e-3)
  return [strategies.Stage(f"star into {hub!r}", graph, {"loss.cycle_weights": (0.0,)}, objective=objective)]


ENCODED: list[str] = []


def _star_aligner(layout, params, compute_dtype, name):
  """The strategy's aligner hook: here the graph's own translators, recording every route encoded
  (a VAE-like strategy would embed both sides its own way here)."""
  from graphbridge.evaluate import GraphAligner

  class Recording(GraphAligner):
    def encode(self, query, gallery, route, xq, xg):
      ENCODED.append(route)
      return super().encode(query, gallery, route, xq, xg)
  return Recording(layout, params, compute_dtype, name=name)


# ---- recipe 3: a report table -------------------------------------------------------------------

class MeanNorm(evaluators.Evaluator):
  """Mean L2 norm of each modality's test rows after its default route into the gallery space."""
  name = "mean_norm"

  def compute(self, ctx):
    rows = []
    for spec in ctx.default_routes:
      enc = ctx.cache.get(spec)
      if enc is not None:
        rows.append({"query": spec.query, "gallery": spec.gallery,
                     "norm": float(jnp.mean(jnp.linalg.norm(jnp.asarray(enc.zq), axis=-1)))})
    return {"mean_norm": rows}

  def markdown(self, summary):
    from graphbridge import evaluate
    return ("## Mean norm\n\n" + evaluators.caption("Mean L2 norm of the translated query rows.")
            + evaluate.format_table(summary["mean_norm"], ("query", "gallery", "norm")) + "\n\n")

  def console(self, summary):
    return [f"mean norm rows: {len(summary['mean_norm'])}"]


@pytest.fixture
def toy_plugins():
  strategies.register(strategies.Strategy("star", _star_stages, aligner=_star_aligner, summary="toy"))
  ENCODED.clear()
  evaluators.register(MeanNorm())
  yield
  strategies.unregister("star")
  evaluators.unregister("mean_norm")


def test_toy_strategy_loss_and_table_end_to_end(toy_plugins, tiny_config, tri_modal_dataset, tmp_path,
                                                monkeypatch):
  config = ml_collections.ConfigDict(tiny_config.to_dict())
  config.strategy = "star"
  config.train.steps = 6
  config.finetune.steps = 2
  config.train.checkpoint_every = 8
  config.train.log_every = 2
  config.train.tensorboard = False
  config.eval.tables = "retrieval,by_hops,mean_norm"
  config_check.validate(config)  # the registry and the evaluators supply the choices
  monkeypatch.setattr(experiment, "load_dataset", lambda c: tri_modal_dataset)
  lines = []
  report = experiment.train_and_evaluate(config, str(tmp_path), log=lines.append, plots=False)

  assert report["strategy"] == "star"
  assert "image->text<-audio" in ENCODED  # every table scored through the strategy's aligner hook
  assert sorted(report["graph"]["edges"]) == ["audio->text", "image->text"]
  # the loss term was trained and logged, and its weight survived the fine-tuning phase
  assert "loss/norm" in report["final_losses"]
  metrics = train_lib.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  assert [m["step"] for m in metrics][-1] == 8 and all("loss/norm" in m for m in metrics)
  # the new table is in report.json and report.md; unselected tables are not
  assert len(report["mean_norm"]) == len([r for r in report["rows"] if r["level"] == "class"
                                          and not r.get("named_route")])
  assert "gap" not in report and "silhouette" not in report
  with open(tmp_path / "report.md") as f:
    md = f.read()
  assert "## Mean norm" in md and "## Retrieval" in md and "## Modality gap" not in md
  assert any(line.startswith("\nretrieval on") or "mean norm rows" in line for line in lines)
  with open(tmp_path / "report.json") as f:
    assert json.load(f)["mean_norm"] == report["mean_norm"]


def test_unknown_table_and_strategy_are_config_errors(tiny_config):
  config = ml_collections.ConfigDict(tiny_config.to_dict())
  config.eval.tables = "retrieval,mean_norms"
  config.strategy = "starr"
  with pytest.raises(config_check.ConfigError) as err:
    config_check.validate(config)
  assert "eval.tables names 'mean_norms'" in str(err.value) and "strategy='starr'" in str(err.value)


def test_objectives_satisfy_the_protocol(tiny_config, tri_modal_dataset):
  setup = train_lib.build_setup(tiny_config, tri_modal_dataset)
  assert isinstance(setup.plan, objective_api.Objective)
  assert isinstance(NormPenaltyPlan(setup.plan, 0.1), objective_api.Objective)
