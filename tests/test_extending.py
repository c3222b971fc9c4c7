"""docs/extending.md, executed: a toy strategy, a toy loss term and a toy report table, each added
from this file (no library file touched), run end to end on a tiny config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

import graphbridge
from graphbridge import defaults
from graphbridge.runs import graft as graft_run
from graphbridge.core import errors
from graphbridge.runs import validate as validate_lib
from graphbridge.evaluation import evaluators as evaluators_lib
from graphbridge.runs import experiment
from graphbridge.model import objective as objective_lib
from graphbridge.model import objectives as objectives_lib
from graphbridge.strategies import translator as translator_lib
from graphbridge.strategies import pivot as pivot_lib
from graphbridge import strategies
from graphbridge.training import setup as setup_lib
from graphbridge.training import writers as writers_lib
from graphbridge.evaluation.aligners import GraphAligner
from graphbridge.evaluation import tables as tables_lib


# ---- recipe 2: a loss term ----------------------------------------------------------------------


class NormPenaltyPlan:
  """The translator graph's loss plan plus one term: the sum of squares of the trainable
  translators' parameters (weight "norm"; kept through fine-tuning)."""

  def __init__(self, plan: objectives_lib.LossPlan, weight: float):
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
    return objectives_lib.finetune_weights(weights, finetune)  # "norm" passes through unchanged

  def loss(self, params, frozen, batch, weights, key, dtype):
    total, aux = self.plan.loss(params, frozen, batch, weights, key, dtype)
    norm = sum(
      jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params["edges"])
    )[None]
    return total + weights["norm"] * norm[0], {**aux, "terms": {**aux["terms"], "norm": norm}}


# ---- recipe 1: a strategy -----------------------------------------------------------------------


def _star_stages(config, dataset):
  """Every modality translated into the most paired one (one direction only), with the norm
  penalty."""
  hub = pivot_lib.choose_pivot(dataset)
  graph = translator_lib.build_graph(dataset, [f"{m}->{hub}" for m in dataset.names if m != hub])

  def objective(layout, ds, cfg):
    paired = [e for e in layout.graph.edges if len(ds.pairs_for(e.src, e.dst))]
    plan = objectives_lib.build_plan(layout, setup_lib.loss_settings_from_config(cfg.loss), paired)
    return NormPenaltyPlan(plan, weight=1e-3)

  return [
    translator_lib.Stage(
      f"star into {hub!r}", graph, {"loss.cycle_weights": (0.0,)}, objective=objective
    )
  ]


ENCODED: list[str] = []


def _star_aligner(layout, params, compute_dtype, name):
  """The strategy's aligner hook: here the graph's own translators, recording every route encoded
  (a VAE-like strategy would embed both sides its own way here)."""

  class Recording(GraphAligner):
    def encode(self, query, gallery, route, xq, xg):
      ENCODED.append(route)
      return super().encode(query, gallery, route, xq, xg)

  return Recording(layout, params, compute_dtype, name=name)


# ---- recipe 3: a report table -------------------------------------------------------------------


class MeanNorm(evaluators_lib.Evaluator):
  """Mean L2 norm of each modality's test rows after its default route into the gallery space."""

  name = "mean_norm"

  def compute(self, ctx):
    rows = []
    for spec in ctx.default_routes:
      enc = ctx.cache.get(spec)
      if enc is not None:
        rows.append(
          {
            "query": spec.query,
            "gallery": spec.gallery,
            "norm": float(jnp.mean(jnp.linalg.norm(jnp.asarray(enc.zq), axis=-1))),
          }
        )
    return {"mean_norm": rows}

  def markdown(self, summary):
    return (
      "## Mean norm\n\n"
      + evaluators_lib.caption("Mean L2 norm of the translated query rows.")
      + tables_lib.format_table(summary["mean_norm"], ("query", "gallery", "norm"))
      + "\n\n"
    )

  def console(self, summary):
    return [f"mean norm rows: {len(summary['mean_norm'])}"]


@pytest.fixture
def toy_plugins():
  strategies.register(
    translator_lib.TranslatorStrategy("star", _star_stages, aligner=_star_aligner, summary="toy")
  )
  ENCODED.clear()
  evaluators_lib.register(MeanNorm())
  yield
  strategies.unregister("star")
  evaluators_lib.unregister("mean_norm")


def test_toy_strategy_loss_and_table_end_to_end(
  toy_plugins, tiny_config, tri_modal_dataset, tmp_path, monkeypatch
):
  config = ml_collections.ConfigDict(tiny_config.to_dict())
  config.strategy = "star"
  config.train.steps = 6
  config.finetune.steps = 2
  config.train.checkpoint_every = 8
  config.train.log_every = 2
  config.train.tensorboard = False
  config.eval.tables = "retrieval,by_hops,mean_norm"
  validate_lib.validate(config)  # the registry and the evaluators supply the choices
  monkeypatch.setattr(experiment, "load_dataset", lambda c: tri_modal_dataset)
  lines = []
  report = experiment.train_and_evaluate(config, str(tmp_path), log=lines.append, plots=False)

  assert report["strategy"] == "star"
  assert "image->text<-audio" in ENCODED  # every table scored through the strategy's aligner hook
  assert sorted(report["graph"]["edges"]) == ["audio->text", "image->text"]
  # the loss term was trained and logged, and its weight survived the fine-tuning phase
  assert "loss/norm" in report["final_losses"]
  metrics = writers_lib.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  assert [m["step"] for m in metrics][-1] == 8 and all("loss/norm" in m for m in metrics)
  # the new table is in report.json and report.md; unselected tables are not
  assert len(report["mean_norm"]) == len(
    [r for r in report["rows"] if r["level"] == "class" and not r.get("named_route")]
  )
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
  with pytest.raises(errors.ConfigError) as err:
    validate_lib.validate(config)
  assert "eval.tables names 'mean_norms'" in str(err.value) and "strategy='starr'" in str(err.value)


def test_objectives_satisfy_the_protocol(tiny_config, tri_modal_dataset):
  setup = setup_lib.build_setup(tiny_config, tri_modal_dataset)
  assert isinstance(setup.plan, objective_lib.Objective)
  assert isinstance(NormPenaltyPlan(setup.plan, 0.1), objective_lib.Objective)


# ---- recipe 4: a strategy whose model is not a translator graph ---------------------------------
# Per modality a linear projection into one shared space ("proj:<m>" modules), trained by symmetric
# InfoNCE on every pair set, through the library's module trainer (the loop DMVAE uses too).

import numpy as np  # noqa: E402

from graphbridge.data.dataset import subset_modalities  # noqa: E402
from graphbridge.strategies.base import Model, Strategy, StrategyRun, graft_settings  # noqa: E402
from graphbridge.training import modules as modules_lib  # noqa: E402
from graphbridge.training.optimizer import make_optimizer  # noqa: E402

SPACE = "space"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit(z):
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)


class ProjectionAligner:
  """Both sides projected into the shared space: route 'a->space<-b'."""

  def __init__(self, weights, name="projection"):
    self.weights, self.name = weights, name

  def default_route(self, query, gallery):
    known = {k.partition(":")[2] for k in self.weights}
    return f"{query}->{SPACE}<-{gallery}" if {query, gallery} <= known else None

  def encode(self, query, gallery, route, xq, xg):
    return self.project(query, xq), self.project(gallery, xg)

  def project(self, modality, x):
    return np.asarray(
      _unit(_unit(jnp.asarray(x, jnp.float32)) @ self.weights[f"proj:{modality}"]["w"])
    )


class ProjectionModel(Model):
  def __init__(self, weights, config, meta, step, workdir, initial=None):
    self.strategy, self.config, self.meta, self.step, self.workdir = (
      "projection",
      config,
      meta,
      step,
      workdir,
    )
    self.weights, self.initial = weights, initial
    self.aligner = ProjectionAligner(weights)

  @property
  def dims(self):
    return {k.partition(":")[2]: int(v["w"].shape[0]) for k, v in self.weights.items()}

  def initial_aligner(self, seed):
    return ProjectionAligner(self.initial) if self.initial is not None else None

  def translate(self, x, route):
    return self.aligner.project(route.split("->")[0], x)


def _init(dims, size, seed):
  rng = np.random.default_rng(seed)
  return {
    f"proj:{m}": {"w": jnp.asarray(rng.normal(size=(d, size)) / np.sqrt(d), jnp.float32)}
    for m, d in dims
  }


class ProjectionStrategy(Strategy):
  name = "projection"
  summary = "linear projection of every modality into one space, InfoNCE on the pairs"
  settings = ml_collections.ConfigDict({"dim": 8, "temperature": 0.1})  # config.projection

  def _train(self, config, dataset, workdir, log, frozen=None, frozen_from=None):
    s = config.projection
    pairs = [(a, b) for a, b in dataset.pairs if len(dataset.pairs_for(a, b))]
    arrays = {
      "emb": {m: np.asarray(dataset.modalities[m].emb, np.float32) for m in dataset.names},
      "pairs": {f"{a}:{b}": dataset.pairs_for(a, b).astype(np.int32) for a, b in pairs},
    }
    batch = int(config.data.batch_size)

    def loss(trainable, fixed, arrays, key):
      params, total = {**fixed, **trainable}, 0.0
      for i, (a, b) in enumerate(pairs):  # a trace-time loop: one program
        index = arrays["pairs"][f"{a}:{b}"]
        pick = index[jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, index.shape[0])]
        za = _unit(_unit(arrays["emb"][a][pick[:, 0]]) @ params[f"proj:{a}"]["w"])
        zb = _unit(_unit(arrays["emb"][b][pick[:, 1]]) @ params[f"proj:{b}"]["w"])
        logits = za @ zb.T / float(s.temperature)
        target = jnp.arange(batch)
        total += 0.5 * (
          -jnp.mean(jax.nn.log_softmax(logits)[target, target])
          - jnp.mean(jax.nn.log_softmax(logits.T)[target, target])
        )
      return total / len(pairs), {"loss/total": total / len(pairs)}

    tx = make_optimizer(config)
    dims = [(m, d) for m, d in dataset.dims.items() if f"proj:{m}" not in (frozen or {})]
    meta = {
      "kind": self.name,
      "spec": {"dims": dict(dataset.dims), "dim": int(s.dim)},
      "config": json.loads(config.to_json_best_effort()),
    }
    result = modules_lib.train_modules(
      config,
      workdir,
      _init(dims, int(s.dim), int(config.seed)),
      modules_lib.make_step(loss, tx),
      tx,
      arrays,
      jax.random.PRNGKey(int(config.seed)),
      meta,
      lambda old: old.get("spec") == meta["spec"],
      lambda v: f"loss {v['loss/total']:.4f}",
      frozen=frozen,
      frozen_from=frozen_from,
      log=log,
    )
    initial = {**(frozen or {}), **_init(dims, int(s.dim), int(config.seed))}
    model = ProjectionModel(result.params, config, meta, result.state["step"], workdir, initial)
    return StrategyRun(self.name, model, [result], result.seconds)

  def train(self, config, dataset, workdir, log=print):
    return self._train(config, dataset, workdir, log)

  def load(self, workdir, step=None, log=None):
    loaded = modules_lib.load_modules(
      workdir,
      lambda meta: _init(meta["spec"]["dims"].items(), meta["spec"]["dim"], 0),
      self.name,
      step,
    )
    config = ml_collections.ConfigDict(loaded.meta["config"])
    return ProjectionModel(loaded.params, config, loaded.meta, loaded.step, workdir)

  def graft(self, config, from_workdir, workdir, dataset, report=True, plots=True, log=print):
    old = modules_lib.load_modules(
      from_workdir,
      lambda meta: _init(meta["spec"]["dims"].items(), meta["spec"]["dim"], 0),
      self.name,
    )
    keep = list(old.meta["spec"]["dims"]) + [graft_settings(config).modality]
    data = subset_modalities(dataset, [m for m in dataset.names if m in keep])
    return self._train(config, data, workdir, log, frozen=old.params, frozen_from=old.step_dir)


PROJECTION = (
  ProjectionStrategy()
)  # config.strategy = "test_extending:PROJECTION" finds it by import


def _projection_config(data_path, steps=20, **graft):
  c = defaults.shrink_for_tests(defaults.base_config())
  c.strategy = "test_extending:PROJECTION"
  c.data.path = data_path
  c.data.batch_size = 8
  c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, steps, 5
  c.train.tensorboard = False
  c.projection = ml_collections.ConfigDict(ProjectionStrategy.settings.to_dict())
  if graft:
    c.graft = ml_collections.ConfigDict(graft)
  return c


def test_a_model_that_is_not_a_translator_graph_trains_evaluates_grafts_and_loads(
  data_path, tmp_path, monkeypatch
):
  """The toy strategy above through the public API (fit, load, evaluate, translate, graft) and the
  CLI (train --base, graft, evaluate in fresh processes), touching no library file."""
  monkeypatch.syspath_prepend(os.path.dirname(__file__))
  base, grafted = str(tmp_path / "base"), str(tmp_path / "grafted")
  config = _projection_config(data_path, modality="audio", connect_to="", base_modalities="")
  graft_run.train_base(config, base, report=False, log=lambda m: None)
  run = graphbridge.load(base)
  assert run.strategy == "projection" and set(run.modalities) == {"image", "text"}
  report = run.evaluate()
  assert {(r["query"], r["gallery"]) for r in report["rows"]} == {
    ("image", "text"),
    ("text", "image"),
  }
  assert (
    np.mean([r["mAP"] - r["chance_mAP"] for r in report["rows"]]) > 0.05
  )  # above chance: it learnt
  assert run.translate(np.ones((2, 6)), "image->space").shape == (2, 8)
  grafted_run = run.graft(config, grafted, log=lambda m: None)
  assert set(grafted_run.modalities) == {"image", "text", "audio"}
  for module in ("proj:image", "proj:text"):  # the old modules: frozen, copied byte for byte
    np.testing.assert_array_equal(
      grafted_run.model.weights[module]["w"], run.model.weights[module]["w"]
    )
    assert translator_graft_digest(base, module) == translator_graft_digest(grafted, module)
  zero_shot = grafted_run.evaluate()["rows"]
  assert any(
    r["query"] == "audio" and r["gallery"] == "image" and r["hops"] == 2 for r in zero_shot
  )

  cfg_file = tmp_path / "projection_config.py"
  cfg_file.write_text(
    "import sys\nsys.path.insert(0, %r)\nimport test_extending\n\n"
    "def get_config(arg=None):\n  return test_extending._projection_config(%r, modality='audio', "
    "connect_to='', base_modalities='')\n" % (os.path.dirname(__file__), data_path)
  )
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), REPO])}
  cli = lambda *args: subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
  )
  cli_base, cli_graft = str(tmp_path / "cli_base"), str(tmp_path / "cli_graft")
  done = cli(
    "launch/graft.py", "--base", f"--config={cfg_file}", f"--workdir={cli_base}", "--noplots"
  )
  assert done.returncode == 0, done.stderr[-2000:]
  done = cli(
    "launch/graft.py",
    f"--from_workdir={cli_base}",
    f"--config={cfg_file}",
    f"--workdir={cli_graft}",
    "--noplots",
  )
  assert done.returncode == 0, done.stderr[-2000:]
  done = cli("launch/evaluate.py", f"--workdir={cli_graft}", "--noplots")
  assert done.returncode == 0 and "audio" in done.stdout and "space" in done.stdout, done.stderr[
    -2000:
  ]
  with open(os.path.join(cli_graft, "report.json")) as f:
    assert json.load(f)["strategy"] == "projection"


def translator_graft_digest(workdir, module):
  """sha256 of a module's item in the newest checkpoint of `workdir`."""
  from graphbridge.training.checkpoint import Checkpoints, item_digest

  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=None, read_only=True)
  return item_digest(
    os.path.join(
      checkpoints.step_dir(checkpoints.latest_complete_step()), modules_lib.item_name(module)
    )
  )
