"""One object for a trained run, for notebooks and scripts, whatever strategy trained it.

  import graphbridge
  run = graphbridge.load("/tmp/gb")                       # or: run = graphbridge.fit(config,
  "/tmp/gb")
  z = run.translate(x_image, "image->text->audio")         # [n, 200] in audio's space,
  L2-normalised
  scores, idx = run.search(x_image, x_audio, route="image->text<-audio", k=10)
  report = run.evaluate(routes=["image->text->audio"])     # the report's numbers as a dict
  w = run.edge_params("image->text")                       # that translator's Flax params
  run = run.continue_training(steps=200)                   # 200 more steps in the same workdir
  grafted = run.graft(graphbridge.config("graft_audio:tiny"), "/tmp/gb_graft")

Inputs are raw embeddings (numpy or jax, [rows, d]); they are L2-normalised as training data is,
and translated in the run's compute dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging as absl_logging

from graphbridge.core.errors import ConfigError, GraphError
from graphbridge.core.fields import names
from graphbridge.core.graph import Edge, ModalityGraph, path_name
from graphbridge.core.routes import best_route, parse_route, without_edges
from graphbridge.data import readers as readers_lib
from graphbridge.data.dataset import Dataset
from graphbridge.evaluation.report import EvalOptions
from graphbridge.model.translators import compose, normalize, unstack
from graphbridge.runs import configs as configs_lib
from graphbridge.runs import evaluate as evaluate_run
from graphbridge.runs import experiment
from graphbridge.runs import graft as graft_run
from graphbridge.strategies import reporting
from graphbridge.strategies.base import Model

PyTree = Any


@contextlib.contextmanager
def quiet_absl(level: int = logging.ERROR) -> Iterator[None]:
  """Hold absl's (and so orbax's) log level at `level` inside the block: a read-only restore
  warns 4-6 times about metadata it does not need."""
  logger = absl_logging.get_absl_logger()
  before = logger.level
  logger.setLevel(level)
  try:
    yield
  finally:
    logger.setLevel(before)


def config(name: str = "digits", **overrides) -> ml_collections.ConfigDict:
  """A packaged or file config, locked (a typo such as `c.train.stpes = 5` raises at once).

  config("digits:tiny", **{"train.steps": 50}) == configs/digits.py get_config("tiny") with
  train.steps = 50. Unknown override keys raise ConfigError naming the closest field."""
  c = apply_overrides(configs_lib.load(name), overrides)
  c.lock()
  return c


def apply_overrides(
  c: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """Set dotted fields {"train.steps": 50}; an unknown one raises ConfigError naming the closest."""
  for key, value in overrides.items():
    message = configs_lib.unknown_field_message(c, key)
    if message:
      raise ConfigError(message)
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    setattr(node, leaf, value)
  return c


def _as_numpy_rows(x, what: str) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim == 1:
    x = x[None]
  if x.ndim != 2:
    raise ValueError(f"{what}: expected [rows, dim] embeddings, got shape {x.shape}")
  return x


@dataclasses.dataclass
class Run:
  """A trained run (see the module docstring): `model`, restored or trained by its strategy."""

  model: Model

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.model.config

  @property
  def step(self) -> int:
    return int(self.model.step)

  @property
  def workdir(self) -> str | None:
    return self.model.workdir

  @property
  def strategy(self) -> str:
    return self.model.strategy

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.model.modalities)

  def _translators(self):
    if not hasattr(self.model, "layout"):
      raise AttributeError(
        f"a {self.strategy} run has no translator graph (graph, layout, params, edge_params "
        "belong to translator strategies); translate, search and evaluate work for every run"
      )
    return self.model

  @property
  def layout(self):
    return self._translators().layout

  @property
  def params(self) -> Mapping[str, PyTree]:
    """{bucket_key: stacked} for every edge (what translators.compose takes)."""
    return self._translators().params

  @property
  def compute_dtype(self) -> str:
    return getattr(self.model, "compute_dtype", "float32")

  @property
  def graph(self) -> ModalityGraph:
    return self._translators().graph

  def __repr__(self) -> str:
    what = (
      self.model.graph.describe() if hasattr(self.model, "layout") else ", ".join(self.modalities)
    )
    return (
      f"Run({self.workdir!r}, step {self.step}, strategy {self.strategy}, "
      f"{self.compute_dtype}; {what})"
    )

  # -- parameters ---------------------------------------------------------------------------------
  def edge_params(self, edge: str | None = None) -> PyTree:
    """edge_params("image->text"): that translator's params; edge_params(): {edge name: params}."""
    model = self._translators()
    if edge is None:
      return unstack(model.layout, model.params)
    key, index = model.layout.where(edge)  # GraphError naming the edges if it is not one
    return jax.tree.map(lambda x: x[index], model.params[key])

  # -- translation and retrieval ------------------------------------------------------------------
  def translate(self, x, path: str):
    """x: [rows, d_src] (numpy or jax) -> [rows, d_dst] float32 along `path` ('image->text->audio'),
    L2-normalised; a single node ('image') only normalises. Returns the input's array type."""
    is_numpy = not isinstance(x, jax.Array)
    if not hasattr(self.model, "layout"):
      out = self.model.translate(_as_numpy_rows(x, f"translate({path!r})"), path)
      return out if is_numpy else jnp.asarray(out)
    rows = jnp.asarray(_as_numpy_rows(x, f"translate({path!r})") if is_numpy else x, jnp.float32)
    rows = normalize(rows)
    if "->" in path:
      out = compose(self.layout, self.params, path, rows, dtype_name=self.compute_dtype)
    else:
      self.graph.dim(path.strip())  # unknown modality -> GraphError
      out = rows
    return np.asarray(out) if is_numpy else out

  def best_route(self, query: str, gallery: str) -> str:
    """The best single route between two modalities (e.g. 'image->text<-audio'); edges trained by
    cycles only (graph.extra_edges) are never a hop of it. The report's default for never-paired
    modalities averages several such routes (docs/evaluation.md, "Routes")."""
    extra = [Edge.parse(e) for e in names(self.config.graph.extra_edges)]
    route = best_route(without_edges(self.graph, extra), query, gallery)
    if route is None:
      raise GraphError(f"no route joins {query} and {gallery} in {self.graph.describe()}")
    return route.name

  def encode(self, queries, gallery, route: str) -> tuple[jax.Array, jax.Array]:
    """Both sides in the route's meeting space: ([nq, d], [ng, d]) float32, L2-normalised."""
    parsed = parse_route(self.graph, route)
    zq = self.translate(
      jnp.asarray(_as_numpy_rows(queries, "queries")), path_name(parsed.query_path)
    )
    zg = self.translate(
      jnp.asarray(_as_numpy_rows(gallery, "gallery")), path_name(parsed.gallery_path)
    )
    return zq, zg

  def search(self, queries, gallery, route: str, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Nearest gallery rows for each query by cosine in the route's meeting space.

    queries: [nq, d_query] raw embeddings of the route's query modality; gallery: [ng, d_gallery].
    route: 'image->text->audio' or 'image->text<-audio' (run.best_route(q, g) gives the default).
    Returns (scores [nq, k] float32, indices [nq, k] int32), best first (jax.lax.top_k)."""
    zq, zg = self.encode(queries, gallery, route)
    k = min(int(k), zg.shape[0])
    if k < 1:
      raise ValueError("search: k must be >= 1 and the gallery non-empty")
    scores, indices = jax.lax.top_k(zq @ zg.T, k)
    return np.asarray(scores), np.asarray(indices)

  # -- evaluation ---------------------------------------------------------------------------------
  def dataset(self, data=None) -> Dataset:
    """The run's own data (config data.path or data.name), or `data` (a Dataset or a path)."""
    if isinstance(data, Dataset):
      return data
    if data is not None:
      return readers_lib.load_named(str(data))
    return evaluate_run.model_dataset(self.model)

  def evaluate(
    self,
    dataset=None,
    routes: Sequence[str] = (),
    split: str | None = None,
    out: str | None = None,
    plots: bool = False,
    log=None,
  ) -> dict:
    """The report's numbers ({"rows": retrieval rows, "by_hops", "gap", "silhouette", ...}) on
    `dataset` (default: the run's own data), with extra named `routes`. out: also write
    report.{json,md} (and plots) there."""
    ds = self.dataset(dataset)
    options = EvalOptions.from_config(self.config, split=split)
    if routes:
      options = dataclasses.replace(options, extra_routes=tuple(routes))
    return reporting.report(
      self.model,
      self.config,
      ds,
      out,
      options=options,
      metrics_dir=self.workdir,
      plots=plots,
      log=log or (lambda msg: None),
    )

  # -- more training ------------------------------------------------------------------------------
  def continue_training(self, steps: int, log=None, plots: bool = False, **overrides) -> "Run":
    """Train `steps` more steps in the same workdir (train.steps raised to step + steps, so the
    learning-rate schedule is stretched to the new length) and return the reloaded run."""
    if not self.workdir:
      raise ValueError("continue_training: this run has no workdir")
    if int(steps) <= 0:
      raise ValueError(f"continue_training: steps must be > 0, got {steps}")
    c = _unlocked(self.config)
    c.train.steps = int(self.step) + int(steps) - int(c.finetune.steps)
    return fit(c, self.workdir, log=log, plots=plots, **overrides)

  def graft(
    self, graft_config: ml_collections.ConfigDict, workdir: str, log=None, plots: bool = False
  ) -> "Run":
    """Add graft_config.graft.modality to this run's graph, training only its new edges (this run's
    edges frozen, byte-identical), in a new `workdir`; returns the grafted run."""
    if not self.workdir:
      raise ValueError("graft: this run has no workdir to graft onto")
    graft_run.graft(graft_config, self.workdir, workdir, plots=plots, log=log or _print)
    return load(workdir)


def _print(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _unlocked(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(c.to_dict())


def load(workdir: str, step: int | None = None) -> Run:
  """The trained run in `workdir` (its latest complete checkpoint, or `step`), quietly."""
  with quiet_absl():
    return Run(evaluate_run.load_model(workdir, step))


def fit(config_or_name, workdir: str, log=None, plots: bool = True, **overrides) -> Run:
  """Train and evaluate as the main command does (report.{json,md}, plots, config.json in workdir)
  and return the trained run. config_or_name: a ConfigDict or a name such as 'digits:tiny';
  overrides: dotted fields, fit("digits:tiny", "/tmp/gb", **{"train.steps": 50})."""
  if isinstance(config_or_name, str):
    c = config(config_or_name, **overrides)
  else:
    c = apply_overrides(_unlocked(config_or_name), overrides) if overrides else config_or_name
  with quiet_absl(logging.WARNING):
    experiment.train_and_evaluate(c, workdir, log=log or _print, plots=plots)
  return load(workdir)
