"""One object for a trained run, for notebooks and scripts, whatever strategy trained it.

  import graphbridge
  run = graphbridge.load("/tmp/gb")                  # or graphbridge.fit(config, "/tmp/gb")
  z = run.translate(x_image, "image->text->audio")   # [n, 200] in audio's space, unit rows
  scores, idx = run.search(x_image, "image", "audio", k=10)   # ranked as the report ranks
  index = run.index(x_audio, "audio", "image")       # a gallery encoded once ...
  scores, idx = index.search(x_image, k=10)          # ... searched batch after batch
  report = run.evaluate(routes=["image->text->audio"])  # the report's numbers as a dict
  run.export("/tmp/gb_export")                       # translators as arrays + JSON (NumPy apply)
  run = run.continue_training(steps=200)             # 200 more steps in the same workdir
  grafted = run.graft(graphbridge.config("graft_audio:tiny"), "/tmp/gb_graft")

Inputs are raw embeddings (numpy or jax, [rows, d]); they are L2-normalised as training data is,
and translated in the run's compute dtype. Every strategy loads (a DMVAE translates along
'image->shared' and 'image->shared->audio'); edge_params, layout and params belong to translators.
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
from graphbridge.core.graph import Edge, ModalityGraph
from graphbridge.core.routes import best_route, without_edges
from graphbridge.data import readers as readers_lib
from graphbridge.data.dataset import Dataset
from graphbridge.evaluation.report import EvalOptions
from graphbridge.data.dataset import split_rows
from graphbridge.evaluation import hubness as hubness_lib
from graphbridge.evaluation import search as search_lib
from graphbridge.training import compile_cache as compile_cache_lib
from graphbridge.model import export as export_lib
from graphbridge.model.translators import unstack
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
  _cached_engine: Any = dataclasses.field(default=None, repr=False, compare=False)

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
  def translate(self, x, path: str, batch_size: int = 4096):
    """x: [rows, d_src] raw embeddings (numpy or jax) -> [rows, d_dst] float32 along `path`
    ('image->text->audio'; DMVAE: 'image->shared', 'image->shared->audio'), L2-normalised; a
    single node ('image') only normalises. Rows are normalised as training data is; batch_size
    rows are translated at a time. Returns the input's array type."""
    is_jax = isinstance(x, jax.Array)
    if not isinstance(path, str) or not path.strip():
      raise GraphError(f"translate: path must be a route such as 'image->text', got {path!r}")
    start = path.replace("<-", "->").split("->")[0].strip()
    if start not in self.model.dims:
      raise GraphError(
        f"translate({path!r}): {start!r} is not a modality of this run "
        f"({', '.join(self.model.modalities)})"
      )
    if "<-" in path:
      raise GraphError(
        f"translate({path!r}): a route meeting in a node ('a->p<-b') has two sides; "
        "translate each side ('a->p', 'b->p'), or search, which compares them"
      )
    rows = search_lib.input_rows(np.asarray(x), "translate input", start, self.model.dims[start])
    batch = search_lib.check_k(batch_size, None, "batch_size")
    if "->" not in path:
      out = rows
    else:
      out = np.concatenate(
        [
          self.model.translate(rows[lo : lo + batch], path.replace(" ", ""))
          for lo in range(0, len(rows), batch)
        ]
      )
    return jnp.asarray(out) if is_jax else out

  def best_route(self, query: str, gallery: str) -> str:
    """The best single route between two modalities (e.g. 'image->text<-audio'); edges trained by
    cycles only (graph.extra_edges) are never a hop of it. The report's default for never-paired
    modalities averages several such routes: default_route gives it."""
    extra = [Edge.parse(e) for e in names(self.config.graph.extra_edges)]
    route = best_route(without_edges(self.graph, extra), query, gallery)
    if route is None:
      raise GraphError(f"no route joins {query} and {gallery} in {self.graph.describe()}")
    return route.name

  def encode(self, queries, gallery, route: str) -> tuple[np.ndarray, np.ndarray]:
    """Both sides in the route's compared space ([nq, d], [ng, d]) float32, as the report encodes
    them (raw rows in, normalised as the data's rows)."""
    aligner, dataset = self._engine()
    ends = route.replace("<-", "->").split("->")
    q, g = ends[0].strip(), ends[-1].strip()
    zq, zg = aligner.encode(
      q,
      g,
      route,
      search_lib.input_rows(queries, "queries", q, dataset.dims[q]),
      search_lib.input_rows(gallery, "gallery", g, dataset.dims[g]),
    )
    return np.asarray(zq), np.asarray(zg)

  def default_route(self, query: str, gallery: str) -> str:
    """The route the report scores `query` -> `gallery` by (an ensemble 'r1 + r2' where it averages
    several; docs/evaluation.md, "Routes")."""
    aligner, dataset = self._engine()
    aligner.bind_data(dataset) if hasattr(aligner, "bind_data") else None
    route = aligner.default_route(query, gallery)
    if route is None:
      raise GraphError(f"no route joins {query} (query) and {gallery} (gallery)")
    return route

  def _engine(self):
    """The report's aligner (post-hoc alignment and route options applied) and the run's data."""
    if self._cached_engine is None:
      dataset = self.dataset()
      self._cached_engine = (reporting.report_aligner(self.model, self.config, dataset), dataset)
    return self._cached_engine

  def index(
    self,
    gallery,
    gallery_modality: str,
    query_modality: str,
    route: str | None = None,
    backend: str = "exact",
    batch_size: int = 4096,
    data_rows: bool = False,
  ) -> search_lib.Index:
    """The gallery rows [n, d] of `gallery_modality`, put once in the space where queries of
    `query_modality` are compared with them (the report's route and hubness correction unless
    `route` names another); index.search(queries, k) answers batch after batch. backend "faiss":
    approximate search for millions of rows (pip install graphbridge[search]). gallery: raw
    embeddings (normalised as the data set's rows are), or data_rows=True: rows of the run's data
    (Run.gallery), used as they are."""
    aligner, dataset = self._engine()
    options = EvalOptions.from_config(self.config)
    bank_k, _ = hubness_lib.resolve_querybank(options.querybank_k, dataset, options.csls_k, "test")
    return search_lib.build_index(
      aligner,
      dataset,
      query_modality,
      gallery_modality,
      gallery,
      route=route,
      querybank_k=bank_k,
      seed=options.seed,
      backend=backend,
      batch_size=batch_size,
      data_rows=data_rows,
    )

  def gallery(self, modality: str, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows [n, d], their row numbers in the data) of `modality` in `split` of the run's own data
    (default: config.eval.split): the gallery the report ranks."""
    dataset = self._engine()[1]
    if modality not in dataset.modalities:
      raise GraphError(f"{modality!r} is not a modality of the data ({', '.join(dataset.names)})")
    index = split_rows(dataset, modality, split or self.config.eval.split)
    return dataset.modalities[modality].emb[index], index

  def search(
    self,
    queries,
    query_modality,
    gallery_modality=None,
    k: int = 10,
    gallery=None,
    route: str | None = None,
    batch_size: int = 4096,
    split: str | None = None,
  ):
    """The k nearest gallery rows of each query row, scored exactly as the report does (its route,
    ensemble and hubness correction unless `route` names another).

    queries: [n, d] raw embeddings of `query_modality`, or None: the run's own rows of it in `split`
    (default config.eval.split). gallery: [m, d'] raw embeddings of `gallery_modality`, or None: the
    run's own rows of it in `split` (Run.gallery). The run's own rows on both sides give exactly the
    report's ranking. Returns (scores [n, k] float32, indices [n, k] int64 into the gallery), best
    first.
    For many searches against one gallery, build it once with Run.index."""
    if not isinstance(query_modality, str):  # the earlier form: search(queries, gallery, route, k)
      gallery = query_modality
      legacy_route = gallery_modality if isinstance(gallery_modality, str) else route
      if not isinstance(legacy_route, str):
        raise TypeError(
          "search(queries, query_modality, gallery_modality, k=...): name the two modalities"
        )
      ends = legacy_route.replace("<-", "->").split("->")
      query_modality, gallery_modality, route = (
        ends[0].strip(),
        ends[-1].strip(),
        route or legacy_route,
      )
    own_gallery, own_queries = gallery is None, queries is None
    if own_gallery:
      gallery, _ = self.gallery(gallery_modality, split)
    if own_queries:
      queries, _ = self.gallery(query_modality, split)
    index = self.index(
      gallery,
      gallery_modality,
      query_modality,
      route=route,
      batch_size=batch_size,
      data_rows=own_gallery,
    )
    return index.search(queries, k, batch_size=batch_size, data_rows=own_queries)

  def export(self, path: str) -> list[str]:
    """Every translator as plain arrays (translators.npz) plus its architecture (translators.json)
    in folder `path`; graphbridge.model.export.load(path).apply(x, route) reproduces run.translate
    in NumPy alone (docs/api.md loads it into PyTorch). Returns the files written."""
    model = self._translators()
    nodes = {n: d for n, d in model.graph.nodes}
    edges = {}
    for bucket in model.layout.buckets:
      for i, edge in enumerate(bucket.edges):
        edges[edge.name] = {
          "arch": bucket.arch.to_dict(),
          "d_in": bucket.d_in,
          "d_out": bucket.d_out,
          "params": jax.tree.map(lambda p, i=i: np.asarray(p[i]), model.params[bucket.key]),
        }
    return export_lib.write(path, nodes, edges)

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
  def continue_training(
    self, steps: int, log=None, plots: bool = False, verbose: bool = False, **overrides
  ) -> "Run":
    """Train `steps` more steps in the same workdir (train.steps raised to step + steps, so the
    learning-rate schedule is stretched to the new length) and return the reloaded run."""
    if not self.workdir:
      raise ValueError("continue_training: this run has no workdir")
    if int(steps) <= 0:
      raise ValueError(f"continue_training: steps must be > 0, got {steps}")
    c = _unlocked(self.config)
    c.train.steps = int(self.step) + int(steps) - int(c.finetune.steps)
    return fit(c, self.workdir, log=log, plots=plots, verbose=verbose, **overrides)

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


def load(workdir: str, step: int | None = None, compile_cache: str | None = None) -> Run:
  """The trained run in `workdir` (its latest complete checkpoint, or `step`), quietly.
  compile_cache: as in fit (translate and search compile once per shape, then read the cache)."""
  compile_cache_lib.enable(compile_cache)
  with quiet_absl():
    return Run(evaluate_run.load_model(workdir, step))


def fit(
  config_or_name,
  workdir: str,
  log=None,
  plots: bool = True,
  verbose: bool = False,
  compile_cache: str | None = None,
  **overrides,
) -> Run:
  """Train and evaluate as the main command does (report.{json,md}, plots, config.json in workdir)
  and return the trained run. config_or_name: a ConfigDict or a name such as 'digits:tiny';
  overrides: dotted fields, fit("digits:tiny", "/tmp/gb", **{"train.steps": 50}).

  Quiet by default: one closing line (warnings still show); verbose=True prints the progress and
  the report's tables as the command line does; log=callable receives every line instead.
  compile_cache: the persistent compilation cache's folder, or "off" (default: on, in
  ~/.cache/graphbridge/jax or $GRAPHBRIDGE_COMPILE_CACHE; training/compile_cache.py)."""
  if isinstance(config_or_name, str):
    c = config(config_or_name, **overrides)
  else:
    c = apply_overrides(_unlocked(config_or_name), overrides) if overrides else config_or_name
  compile_cache_lib.enable(compile_cache)
  lines: list[str] = []
  sink = log or (_print if verbose else lines.append)
  with quiet_absl(logging.WARNING):
    experiment.train_and_evaluate(c, workdir, log=sink, plots=plots)
  run = load(workdir)
  if log is None and not verbose:
    _print(closing_line(run, lines))
  return run


def closing_line(run: Run, lines: Sequence[str]) -> str:
  """The quiet fit's one line: where the run is, its step, and the run's own last line (its
  timing, or why nothing was trained)."""
  last = next((line for line in reversed(lines) if line.strip()), "")
  return f"graphbridge.fit: {run.workdir} at step {run.step}; report.md there. {last.strip()}"
