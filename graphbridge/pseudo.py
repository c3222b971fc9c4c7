"""Pseudo-pairs from unpaired rows: self-training rounds gated per modality pair by agreement.

After a training round, for every pair of modalities (a, b) the unpaired train rows of a are
translated into b's space (and b's into a's) along the aligner's default route and matched to the
other side's unpaired rows, by mutual nearest neighbours or by entropic optimal transport (Sinkhorn,
then mutual argmax of the plan). Matching unpaired rows is all-or-nothing per modality pair: between
strongly related modalities nearly every match is right, between weakly related ones nearly none
is. So each pair of modalities is gated by an estimate of its matches' precision, the *agreement*:
the fraction of matches found in b's space that are found again, the same, in a's space (two
different compositions of translators; wrong matches rarely agree). Pairs of modalities whose
agreement reaches `pseudo.min_agreement` get their agreed matches as extra training pairs (added to
an existing pair set, or as a new pair set: an edge between modalities never paired), and the next
round trains from scratch on the grown data. Settings (graphbridge/defaults.py, `pseudo.*`):

  rounds         self-training rounds after the first training (0 = off); -1 = auto (the
                 default): 1 where every pair set of the data is instance-level, else 0 (see
                 resolve_rounds)
  method         "sinkhorn" | "mutual_nn"
  min_agreement  gate per modality pair (estimated precision of its matches)
  max_rows       unpaired rows per modality considered (a deterministic subsample beyond)
  new_edges      also pair modalities that the data never paired (grows the graph)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from graphbridge import data as data_lib
from graphbridge.data import Dataset

METHODS = ("sinkhorn", "mutual_nn")
AUTO = -1          # pseudo.rounds = -1: decided by the data (resolve_rounds)
AUTO_ROUNDS = 1    # rounds that auto runs where every pair set is instance-level


@dataclasses.dataclass(frozen=True)
class PseudoSettings:
  rounds: int = 0
  method: str = "sinkhorn"
  min_agreement: float = 0.5
  max_rows: int = 1000
  new_edges: bool = True
  epsilon: float = 0.02

  def __post_init__(self):
    if self.rounds < AUTO:
      raise ValueError(f"pseudo.rounds={self.rounds!r}: must be >= 0, or -1 for auto")
    if self.method not in METHODS:
      raise ValueError(f"pseudo.method={self.method!r}: choose one of {', '.join(METHODS)}")
    if not 0.0 <= self.min_agreement <= 1.0:
      raise ValueError(f"pseudo.min_agreement={self.min_agreement!r}: must be in [0, 1]")

  @classmethod
  def from_config(cls, config, dataset: Dataset | None = None) -> "PseudoSettings":
    """The config's settings; with `dataset`, rounds=-1 (auto) resolved by resolve_rounds."""
    p = config.get("pseudo", None) or {}
    rounds = int(p.get("rounds", AUTO))
    if dataset is not None:
      rounds = resolve_rounds(rounds, dataset)[0]
    return cls(rounds=rounds, method=str(p.get("method", "sinkhorn")),
               min_agreement=float(p.get("min_agreement", 0.5)), max_rows=int(p.get("max_rows", 1000)),
               new_edges=bool(p.get("new_edges", True)), epsilon=float(p.get("epsilon", 0.02)))


def resolve_rounds(rounds: int, dataset: Dataset) -> tuple[int, str]:
  """(rounds to run, why) for pseudo.rounds on `dataset`.

  rounds >= 0 is kept. -1 (auto) runs AUTO_ROUNDS where every pair set of the data is
  instance-level by the rule of loss.infonce_positives="auto" (data.choose_positives picks "pair"),
  else 0: on class-level pairs (e.g. the embedded digits set) rows have no instance to match, the
  gate still accepts class-consistent matches, and the pseudo-paired edge then becomes the route
  between never-paired modalities (zero-shot mAP fell 0.95 -> 0.53 on digits; docs/unpaired.md)."""
  rounds = int(rounds)
  if rounds != AUTO:
    if rounds < 0:
      raise ValueError(f"pseudo.rounds={rounds!r}: must be >= 0, or -1 for auto")
    return rounds, "asked for"
  pair_sets = [(a, b) for a, b in dataset.pairs if len(dataset.pairs_for(a, b))]
  if not pair_sets:
    return 0, "auto: no pair sets"
  choices = {(a, b): data_lib.choose_positives(dataset, a, b, "auto") for a, b in pair_sets}
  class_level = [f"{a}<->{b} ({why})" for (a, b), (c, why) in choices.items() if c != "pair"]
  if class_level:
    return 0, "auto: class-level pair sets " + ", ".join(class_level)
  return AUTO_ROUNDS, f"auto: all {len(pair_sets)} pair sets instance-level"


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mutual_nn(zq: np.ndarray, zg: np.ndarray) -> np.ndarray:
  """[m, 2] (query row, gallery row) that are each other's nearest neighbour by cosine."""
  s = _unit(zq) @ _unit(zg).T
  fwd, back = np.argmax(s, 1), np.argmax(s, 0)
  i = np.nonzero(back[fwd] == np.arange(len(zq)))[0]
  return np.stack([i, fwd[i]], 1)


def sinkhorn_plan(zq: np.ndarray, zg: np.ndarray, epsilon: float = 0.02, iters: int = 200,
                  tol: float = 1e-3) -> np.ndarray:
  """Entropic OT plan [n_q, n_g] between uniform marginals, cost 1 - cos (log-domain Sinkhorn,
  float32; stops once the row marginals are within `tol` (relative) of uniform)."""
  cost = (1.0 - _unit(zq) @ _unit(zg).T).astype(np.float32)
  log_k = -cost / np.float32(epsilon)
  n, m = cost.shape
  log_a, log_b = np.float32(-np.log(n)), np.float32(-np.log(m))
  f, g = np.zeros(n, np.float32), np.zeros(m, np.float32)

  def lse(x, axis):
    mx = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(mx, axis) + np.log(np.sum(np.exp(x - mx), axis=axis))

  for it in range(iters):
    f = log_a - lse(log_k + g[None, :], 1)
    g = log_b - lse(log_k + f[:, None], 0)
    if it % 10 == 9:
      rows = np.exp(f + lse(log_k + g[None, :], 1)) * n   # row sums / (1/n); 1 at convergence
      if np.max(np.abs(rows - 1.0)) < tol:
        break
  return np.exp(log_k + f[:, None] + g[None, :])


def sinkhorn_matches(zq: np.ndarray, zg: np.ndarray, epsilon: float = 0.02) -> np.ndarray:
  """[m, 2] rows matched by the OT plan: mutual argmax of the plan (a global assignment: each row's
  mass goes where the others' does not, which NN matching cannot see)."""
  plan = sinkhorn_plan(zq, zg, epsilon)
  fwd, back = np.argmax(plan, 1), np.argmax(plan, 0)
  i = np.nonzero(back[fwd] == np.arange(len(zq)))[0]
  return np.stack([i, fwd[i]], 1)


def match(zq: np.ndarray, zg: np.ndarray, method: str = "sinkhorn", epsilon: float = 0.02) -> np.ndarray:
  """[m, 2] (query row, gallery row) matches of zq [n_q, d] and zg [n_g, d] (cosine)."""
  if method == "sinkhorn":
    return sinkhorn_matches(zq, zg, epsilon)
  if method == "mutual_nn":
    return mutual_nn(zq, zg)
  raise ValueError(f"match method {method!r}: choose one of {', '.join(METHODS)}")


def unpaired_train_rows(dataset: Dataset, modality: str, partner: str) -> np.ndarray:
  """Train rows of `modality` in no pair with `partner` (rows already paired need no pseudo-pair)."""
  mod = dataset.modalities[modality]
  rows = np.nonzero(mod.train)[0]
  used = dataset.pairs_for(modality, partner, split="all")[:, 0]
  return np.setdiff1d(rows, used)


def _subsample(rows: np.ndarray, n: int, seed: int, name: str) -> np.ndarray:
  if len(rows) <= n:
    return rows
  rng = np.random.default_rng([seed, sum(map(ord, name))])
  return np.sort(rng.choice(rows, n, replace=False))


@dataclasses.dataclass
class EdgeMatches:
  a: str
  b: str
  pairs: np.ndarray        # [m, 2] agreed (row of a, row of b)
  candidates: int          # matches found in b's space
  agreement: float         # fraction of them found again in a's space
  accepted: bool
  precision: float | None = None   # true fraction correct, where ids say (reported, never used)


def pseudo_pairs(aligner, dataset: Dataset, settings: PseudoSettings, seed: int = 0) -> list[EdgeMatches]:
  """Agreed matches of unpaired train rows for every pair of modalities (see the module docstring)."""
  out = []
  names = dataset.names
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      paired = bool(dataset.pairs_for(a, b).size)
      if not paired and not settings.new_edges:
        continue
      route_ab, route_ba = aligner.default_route(a, b), aligner.default_route(b, a)
      if route_ab is None or route_ba is None:
        continue
      rows_a = _subsample(unpaired_train_rows(dataset, a, b), settings.max_rows, seed, a + b)
      rows_b = _subsample(unpaired_train_rows(dataset, b, a), settings.max_rows, seed, b + a)
      if len(rows_a) < 2 or len(rows_b) < 2:
        continue
      xa, xb = dataset.modalities[a].emb[rows_a], dataset.modalities[b].emb[rows_b]
      za, zb = aligner.encode(a, b, route_ab, xa, xb)        # compared where a's route meets b
      wb, wa = aligner.encode(b, a, route_ba, xb, xa)        # and where b's route meets a
      m_ab = match(za, zb, settings.method, settings.epsilon)
      m_ba = match(wb, wa, settings.method, settings.epsilon)
      back = {int(j): int(k) for j, k in m_ba}               # row of b -> row of a
      agree = np.asarray([back.get(int(j)) == int(k) for k, j in m_ab], bool)
      agreement = float(agree.mean()) if len(m_ab) else 0.0
      kept = m_ab[agree]
      pairs = np.stack([rows_a[kept[:, 0]], rows_b[kept[:, 1]]], 1) if len(kept) else np.zeros((0, 2), int)
      ids_a, ids_b = dataset.modalities[a].ids, dataset.modalities[b].ids
      precision = (float(np.mean(ids_a[pairs[:, 0]] == ids_b[pairs[:, 1]]))
                   if ids_a is not None and ids_b is not None and len(pairs) else None)
      out.append(EdgeMatches(a, b, pairs, len(m_ab), agreement,
                             agreement >= settings.min_agreement and len(pairs) >= 2, precision))
  return out


def grow(dataset: Dataset, matches: list[EdgeMatches]) -> Dataset:
  """A copy of the data with the accepted matches as extra pairs (new pair sets where needed)."""
  pairs = {k: v.copy() for k, v in dataset.pairs.items()}
  for m in matches:
    if not m.accepted:
      continue
    if (m.a, m.b) in pairs:
      pairs[(m.a, m.b)] = np.concatenate([pairs[(m.a, m.b)], m.pairs])
    elif (m.b, m.a) in pairs:
      pairs[(m.b, m.a)] = np.concatenate([pairs[(m.b, m.a)], m.pairs[:, ::-1]])
    else:
      pairs[(m.a, m.b)] = m.pairs
  return Dataset(dataset.modalities, pairs, dataset.class_names, dataset.source)


def describe(matches: list[EdgeMatches]) -> str:
  parts = []
  for m in matches:
    prec = "" if m.precision is None else f", true precision {m.precision:.2f}"
    parts.append(f"{m.a}-{m.b} {'+' if m.accepted else '-'}{len(m.pairs)} (agreement {m.agreement:.2f}{prec})")
  return "; ".join(parts)


def self_train(config, dataset: Dataset, train_round: Callable[[Dataset, int], object],
               make_aligner: Callable[[object], object], log: Callable[[str], None] = print):
  """Train, then `pseudo.rounds` times: grow the data with gated pseudo-pairs and train again.

  train_round(dataset, round) -> result; make_aligner(result) -> aligner. Returns (result, data
  of the last round). pseudo.rounds=-1 (auto) is resolved on `dataset` (resolve_rounds)."""
  settings = PseudoSettings.from_config(config, dataset)
  result = train_round(dataset, 0)
  grown = dataset
  for r in range(1, settings.rounds + 1):
    aligner = make_aligner(result)
    matches = pseudo_pairs(aligner, dataset, settings, seed=int(config.get("seed", 0)) + r)
    log(f"pseudo-pairs round {r}: {describe(matches)}")
    grown = grow(dataset, matches)
    if grown.pairs.keys() == dataset.pairs.keys() and all(len(grown.pairs[k]) == len(dataset.pairs[k])
                                                            for k in grown.pairs):
      log("pseudo-pairs: no modality pair passed the gate; keeping the model")
      break
    result = train_round(grown, r)
  return result, grown
