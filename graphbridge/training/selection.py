"""Per-edge selection on held-back pairs: a translator moves from its closed-form start only where
its own held-back pairs say it should.

With a linear path (model.linear_rank) every edge with pairs starts as the ridge map of its pairs
(closed_form.py). With `train.select_edges` on (-1, auto: wherever edges start in closed form),
`held_count(n)` of each pair set's n train pairs are held back before training and never trained
on: round(sqrt(n)) or 10%, whichever is more, at most MAX_HELD (n = 10: 3, 40: 6, 160: 16,
640: 64, from 2,560 on: 256); none where fewer than 2 would be held or fewer than 3 left. At the
start and every `train.select_every` steps, each edge a->b with held pairs translates their a
rows and ranks their b rows among up to MAX_DISTRACTORS other train rows of b: one average
precision per held pair and level the data has (instance: its partner; class: the rows of its
class, where both modalities have labels), averaged. At the end, each edge keeps the params of
its best-scoring step if that beats its start in a one-sided paired t-test on the per-pair
differences at `train.select_confidence` (0.95: with 3 held-back pairs the best step must beat
the start by 2.9 standard errors, with 16 by 1.75); otherwise (and wherever no pairs could be
held back) it is reset to its start refitted on *every* pair, the held-back ones included. So
where training does not help, the held-back pairs cost nothing; where it helps, they cost at most
MAX_HELD pairs of the MLP's training set.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from graphbridge import defaults
from graphbridge.core.rows import unit_rows
from graphbridge.data.dataset import Dataset
from graphbridge.model.translators import EdgeLayout, apply_bucket, dtype_from_name, normalize
from graphbridge.training import closed_form
from graphbridge.training import setup as setup_lib

AUTO = -1
MAX_HELD = 256  # held-back pairs per pair set, at most
MAX_DISTRACTORS = 1024  # other train rows of the gallery modality each held pair is ranked among


def held_count(n: int) -> int:
  """Pairs held back of a pair set of n train pairs (0: too few to hold any back)."""
  h = min(MAX_HELD, max(int(round(math.sqrt(n))), int(round(0.1 * n))))
  return h if h >= 2 and n - h >= closed_form.MIN_PAIRS else 0


def t_quantile(confidence: float, dof: int) -> float:
  """The one-sided Student t quantile (e.g. 0.95 with 2 degrees of freedom: 2.92); inf below 1."""
  if dof < 1:
    return math.inf
  from scipy import stats  # a dependency of jax

  return float(stats.t.ppf(confidence, dof))


def _rng(seed: int, *names: str) -> np.random.Generator:
  return np.random.default_rng([int(seed)] + [zlib.crc32(n.encode()) for n in names])


def _keys(pairs: np.ndarray) -> np.ndarray:
  return pairs[:, 0].astype(np.int64) * (1 << 32) + pairs[:, 1].astype(np.int64)


@dataclasses.dataclass
class PairHoldout:
  """The data's own pairs, split once into pairs to train on and pairs held back for selection.

  real: {(a, b): [P, 2]} train pairs of every pair set as the data gave them (pseudo-pairs added
  later are not among them); held: {(a, b): [h, 2]} the held-back part. The graph strategy keeps
  one holdout through its pseudo-pair rounds, so every round holds back the same pairs and starts
  from the same closed-form maps (cached here)."""

  real: dict[tuple[str, str], np.ndarray]
  held: dict[tuple[str, str], np.ndarray]
  linear_rank: int = 0  # the translators' linear path (0: none, so no closed-form start)
  why: str = ""  # why that linear path (setup.resolve_linear_rank)
  select: bool = False  # per-edge selection on the held-back pairs
  pseudo: frozenset = frozenset()  # pair sets of this round only (composed pseudo-pairs)
  _starts: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def for_run(cls, config, dataset: Dataset, graph_plan: bool = True) -> "PairHoldout":
    """The holdout of a run of `config` on `dataset` (the data's own pairs): the linear path as
    model.linear_rank resolves on it, and held-back pairs where that path is on and
    train.select_edges is not 0."""
    config = defaults.complete(config)  # a config built by hand or by an older version
    rank, why = setup_lib.resolve_linear_rank(config.model, dataset, graph_plan)
    select = rank > 0 and int(config.train.select_edges) != 0
    return cls.choose(dataset, int(config.seed), select, rank, why)

  @classmethod
  def choose(
    cls,
    dataset: Dataset,
    seed: int = 0,
    select: bool = True,
    linear_rank: int = 0,
    why: str = "",
  ) -> "PairHoldout":
    real, held = {}, {}
    for a, b in dataset.pairs:
      pairs = dataset.pairs_for(a, b)
      real[(a, b)] = pairs
      h = held_count(len(pairs)) if select else 0
      if h:
        pick = _rng(seed, a, b).choice(len(pairs), h, replace=False)
        held[(a, b)] = pairs[np.sort(pick)]
    return cls(real, held, linear_rank, why, select)

  def for_round(self, dataset: Dataset, seed: int = 0) -> "PairHoldout":
    """This holdout for a round trained on `dataset` (the data grown by pseudo-pairs): pair sets
    the data never had (new edges of composed pseudo-pairs) are held back from and started from
    like the data's own, on their pseudo-pairs (the data's own pairs are none), so every edge is
    selected; the data's pair sets keep their own start and held-back pairs."""
    extra_real, extra_held = {}, {}
    for a, b in dataset.pairs:
      if self._oriented(self.real, a, b) is not None:
        continue
      pairs = dataset.pairs_for(a, b)
      extra_real[(a, b)] = pairs
      h = held_count(len(pairs)) if self.select else 0
      if h:
        pick = _rng(seed, "pseudo", a, b).choice(len(pairs), h, replace=False)
        extra_held[(a, b)] = pairs[np.sort(pick)]
    if not extra_real:
      return self
    return dataclasses.replace(
      self,
      real={**self.real, **extra_real},
      held={**self.held, **extra_held},
      pseudo=frozenset(extra_real),
    )

  def is_pseudo(self, src: str, dst: str) -> bool:
    return (src, dst) in self.pseudo or (dst, src) in self.pseudo

  def describe(self) -> str:
    if not self.linear_rank:
      return f"translators: MLP, no linear path ({self.why})"
    held = ", ".join(f"{a}<->{b} {len(p)}" for (a, b), p in self.held.items()) or "none"
    return (
      f"translators: linear path (rank cap {self.linear_rank}) + MLP residual starting at zero, "
      f"each edge from the ridge map of its pairs ({self.why}); "
      + (f"per-edge selection on held-back pairs ({held})" if self.select else "no selection")
    )

  def _oriented(self, table, src: str, dst: str) -> np.ndarray | None:
    if (src, dst) in table:
      return table[(src, dst)]
    if (dst, src) in table:
      return table[(dst, src)][:, ::-1]
    return None

  def held_for(self, src: str, dst: str) -> np.ndarray:
    """[h, 2] held-back (row of src, row of dst); empty where none are."""
    held = self._oriented(self.held, src, dst)
    return np.zeros((0, 2), np.int64) if held is None else np.ascontiguousarray(held)

  def real_for(self, src: str, dst: str, include_held: bool) -> np.ndarray | None:
    """The data's own train pairs src -> dst (without the held-back ones unless include_held);
    None where src and dst were not paired in the data (e.g. an edge of composed pseudo-pairs)."""
    real = self._oriented(self.real, src, dst)
    if real is None or include_held:
      return real
    held = self.held_for(src, dst)
    return real[~np.isin(_keys(real), _keys(held))] if len(held) else real

  def without_held(self, dataset: Dataset) -> Dataset:
    """`dataset` (possibly grown by pseudo-pairs) with the held-back pairs taken out of its pair
    sets; rows, masks and every other pair stay."""
    if not self.held:
      return dataset
    pairs = {}
    for (a, b), p in dataset.pairs.items():
      held = self.held_for(a, b)
      pairs[(a, b)] = p[~np.isin(_keys(p), _keys(held))] if len(held) else p
    return Dataset(dataset.modalities, pairs, dataset.class_names, dataset.source)

  def start(
    self, dataset: Dataset, edge: str, include_held: bool, pairs: np.ndarray | None = None
  ) -> closed_form.LinearStart | None:
    """The closed-form start of `edge` on its real pairs (all of them with include_held, else
    without the held-back ones); edges the data never paired start from `pairs` (their training
    pairs). Cached per edge and pair set."""
    src, dst = edge.split("->")
    real = self.real_for(src, dst, include_held)
    if real is None:
      return None if pairs is None else closed_form.fit_start(dataset, src, dst, pairs)
    key = (edge, bool(include_held) or not len(self.held_for(src, dst)), len(real))
    key += (zlib.crc32(np.ascontiguousarray(real).tobytes()),)  # pseudo pair sets change by round
    if key not in self._starts:
      self._starts[key] = closed_form.fit_start(dataset, src, dst, real)
    return self._starts[key]


def _average_precision(sims: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """[n] average precision of each query row of sims [n, g] given positive [n, g] (bool)."""
  order = np.argsort(-sims, axis=1, kind="stable")
  rel = np.take_along_axis(positive, order, axis=1)
  precision = np.cumsum(rel, axis=1) / np.arange(1, sims.shape[1] + 1)
  return np.sum(precision * rel, axis=1) / np.maximum(rel.sum(1), 1)


@dataclasses.dataclass
class EdgeChoice:
  """What selection decided for one edge (report.json "bridge")."""

  edge: str
  held: int
  start_ap: float
  best_ap: float
  best_step: int
  moved: bool

  def describe(self) -> str:
    if self.moved:
      return (
        f"{self.edge} trained (step {self.best_step}: held-back AP {self.best_ap:.3f} against "
        f"{self.start_ap:.3f} at its start, {self.held} pairs)"
      )
    return (
      f"{self.edge} closed form (held-back AP {self.start_ap:.3f}, best trained {self.best_ap:.3f} "
      f"at step {self.best_step}, {self.held} pairs)"
    )


class EdgeSelector:
  """Scores every trainable edge with held-back pairs and remembers each one's best params.

  layout: the run's EdgeLayout; dataset: the data the pairs index (train rows as distractors);
  holdout: the held-back pairs; positives: {"a->b": "pair" | "label"} per pair set (either
  direction). One jitted program translates every edge's held-back rows and compares them with
  its gallery; average precisions are computed on the host."""

  def __init__(
    self,
    layout: EdgeLayout,
    dataset: Dataset,
    holdout: PairHoldout,
    positives: Mapping[str, str],
    compute_dtype: str = "float32",
    seed: int = 0,
  ):
    self.layout = layout
    self._positive: dict[str, tuple[np.ndarray, ...]] = {}
    queries, galleries = {}, {}
    for bucket in layout.trainable_buckets:
      parts = []
      for edge in bucket.edges:
        held = holdout.held_for(edge.src, edge.dst)
        if not len(held):
          parts.append(None)
          continue
        mode = positives.get(edge.name, positives.get(f"{edge.dst}->{edge.src}", "pair"))
        parts.append(self._edge_arrays(dataset, edge.src, edge.dst, held, mode, seed))
        self._positive[edge.name] = parts[-1][2]
      if not any(p is not None for p in parts):
        continue
      n = max(len(p[0]) for p in parts if p is not None)
      g = max(len(p[1]) for p in parts if p is not None)
      q = np.zeros((bucket.size, n, bucket.d_in), np.float32)
      gal = np.zeros((bucket.size, g, bucket.d_out), np.float32)
      for i, p in enumerate(parts):
        if p is not None:
          q[i, : len(p[0])], gal[i, : len(p[1])] = p[0], p[1]
      queries[bucket.key], galleries[bucket.key] = jnp.asarray(q), jnp.asarray(gal)
    self._queries, self._galleries = queries, galleries
    self.edges = tuple(self._positive)
    dtype = dtype_from_name(compute_dtype)

    def sims(params, queries, galleries):
      out = {}
      for key, x in queries.items():
        y = normalize(apply_bucket(layout.bucket_by_key[key], params[key], x, dtype))
        out[key] = jnp.einsum("end,egd->eng", y, galleries[key])
      return out

    self._sims = jax.jit(sims)
    self.history: dict[str, dict[int, np.ndarray]] = {e: {} for e in self.edges}
    self.best_step: dict[str, int] = {}
    self.best_params: dict | None = None  # {bucket: stacked}, each edge's row at its best step
    self.stale = 0  # scores in a row at which no edge improved on its best

  @staticmethod
  def _edge_arrays(dataset, src, dst, held, mode, seed):
    """(queries [h, d_src], gallery [g, d_dst] unit rows, positives: one [h, g] bool mask per
    level scored) of one edge. "pair" positives: the partner, and, where both modalities have
    labels, also the rows of its class (an edge is scored at every level the data has: a step
    that sharpens instances but blurs classes is no gain); "label": the rows of its class."""
    ms, md = dataset.modalities[src], dataset.modalities[dst]
    partners = np.unique(held[:, 1])
    others = np.setdiff1d(np.nonzero(md.train)[0], partners)
    if len(others) > MAX_DISTRACTORS:
      others = np.sort(_rng(seed, src, dst).choice(others, MAX_DISTRACTORS, replace=False))
    gallery = np.concatenate([partners, others])
    labelled = ms.labels is not None and md.labels is not None
    by_label = ms.labels[held[:, 0]][:, None] == md.labels[gallery][None, :] if labelled else None
    if mode == "label" and labelled:
      positive = (by_label,)
    else:
      by_pair = held[:, 1][:, None] == gallery[None, :]
      positive = (by_pair,) if by_label is None else (by_pair, by_label)
    x = np.asarray(ms.emb[held[:, 0]], np.float32)
    return x, unit_rows(np.asarray(md.emb[gallery], np.float64)).astype(np.float32), positive

  def score(self, step: int, params: Mapping) -> dict[str, float]:
    """Score `params` ({bucket: stacked}, at least the trainable buckets) as step `step`;
    returns {"select/<edge>": mean AP}. Keeps each edge's params at its best mean so far."""
    if not self.edges:
      return {}
    sims = jax.device_get(
      self._sims({k: params[k] for k in self._queries}, self._queries, self._galleries)
    )
    out, improved = {}, []
    for key, block in sims.items():
      for i, edge in enumerate(self.layout.bucket_by_key[key].edges):
        positive = self._positive.get(edge.name)
        if positive is None:
          continue
        n, g = positive[0].shape
        ap = np.mean([_average_precision(block[i, :n, :g], mask) for mask in positive], axis=0)
        self.history[edge.name][int(step)] = ap
        out[f"select/{edge.name}"] = float(ap.mean())
        best = self.best_step.get(edge.name)
        if best is None or ap.mean() > self.history[edge.name][best].mean():
          self.best_step[edge.name] = int(step)
          improved.append((key, i))
    if improved:
      self._keep(params, improved)
    self.stale = 0 if improved else self.stale + 1
    return out

  def _keep(self, params: Mapping, rows: list[tuple[str, int]]) -> None:
    if self.best_params is None:
      self.best_params = {k: jax.tree.map(jnp.array, params[k]) for k in self._queries}
      return
    for key, i in rows:
      self.best_params[key] = jax.tree.map(
        lambda best, now, i=i: best.at[i].set(now[i]), self.best_params[key], params[key]
      )

  def state_dict(self) -> dict:
    """What selection has seen so far, as arrays (the checkpoint's train item keeps it under
    "select", so a resumed run decides as an uninterrupted one would): per edge (keyed by its
    position in `edges`) the scored steps and their per-pair APs and the best step, the scores
    in a row without a gain, and each edge's best params."""
    out = {"stale": np.asarray(self.stale, np.int64), "edges": {}}
    for i, edge in enumerate(self.edges):
      steps = sorted(self.history[edge])
      if not steps:
        continue
      out["edges"][f"e{i}"] = {
        "steps": np.asarray(steps, np.int64),
        "ap": np.stack([np.asarray(self.history[edge][s], np.float64) for s in steps]),
        "best": np.asarray(self.best_step[edge], np.int64),
      }
    if self.best_params is not None:
      out["best_params"] = jax.device_get(self.best_params)
    return out

  def load_state(self, saved: Mapping) -> None:
    """Continue from state_dict()'s arrays (a resumed run)."""
    self.stale = int(saved.get("stale", 0))
    for i, edge in enumerate(self.edges):
      entry = (saved.get("edges") or {}).get(f"e{i}")
      if entry is None:
        continue
      aps = np.asarray(entry["ap"], np.float64)
      self.history[edge] = {int(s): aps[j] for j, s in enumerate(np.asarray(entry["steps"]))}
      self.best_step[edge] = int(entry["best"])
    if saved.get("best_params") is not None:
      self.best_params = jax.tree.map(jnp.asarray, dict(saved["best_params"]))

  def scored(self, step: int) -> bool:
    return any(int(step) in h for h in self.history.values())

  def decide(self, start_step: int, confidence: float) -> dict[str, EdgeChoice]:
    """{edge: EdgeChoice}: an edge moves (keeps its best step's params) where its best step is
    not the start and beats it in a one-sided paired t-test of the per-pair AP differences at
    `confidence` (0: whenever its mean is higher)."""
    out = {}
    for edge in self.edges:
      history = self.history[edge]
      if start_step not in history:
        continue
      best = self.best_step[edge]
      diff = history[best] - history[start_step]
      n = len(diff)
      se = float(np.std(diff, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
      margin = t_quantile(confidence, n - 1) if confidence > 0 else 0.0
      moved = best != start_step and float(diff.mean()) > max(margin * se, 0.0)
      out[edge] = EdgeChoice(
        edge, n, float(history[start_step].mean()), float(history[best].mean()), best, moved
      )
    return out
