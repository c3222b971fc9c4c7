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
                 default): 2 where every pair set of the data is instance-level, else 0 (see
                 resolve_rounds)
  method         "sinkhorn" | "mutual_nn"
  min_agreement  gate per modality pair (estimated precision of its matches)
  max_rows       unpaired rows per modality considered (a deterministic subsample beyond)
  new_edges      also pair modalities that the data never paired (grows the graph)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable
import jax
import jax.numpy as jnp
import numpy as np
from graphbridge.data import positives as positives_lib
from graphbridge.data.dataset import Dataset
from graphbridge.core.rows import unit_rows
from graphbridge.linear import baselines as baselines_lib
from graphbridge import defaults
from graphbridge.core import fields as fields_lib
from graphbridge.core.fields import CHOICES


METHODS = CHOICES["pseudo.method"]


GATES = CHOICES["pseudo.gate"]


AUTO = -1  # pseudo.rounds = -1: decided by the data (resolve_rounds)


AUTO_ROUNDS = 2  # rounds that auto runs where every pair set is instance-level


def _declared(name: str):
  return dataclasses.field(default=defaults.default(f"pseudo.{name}"))


@dataclasses.dataclass(frozen=True)
class PseudoSettings:
  """config.pseudo as values (defaults and checks: the declarations in defaults.py)."""

  rounds: int = _declared("rounds")
  method: str = _declared("method")
  min_agreement: float = _declared("min_agreement")
  max_rows: int = _declared("max_rows")
  new_edges: bool = _declared("new_edges")
  epsilon: float = _declared("epsilon")
  gate: str = _declared("gate")
  min_precision: float = _declared("min_precision")
  probe_folds: int = _declared("probe_folds")
  min_new_pairs: int = _declared("min_new_pairs")

  def __post_init__(self):
    found = fields_lib.problems(
      {"pseudo": dataclasses.asdict(self)}, {"pseudo": dataclasses.asdict(self)}
    )
    if found:
      raise ValueError("; ".join(found))

  @classmethod
  def from_config(cls, config, dataset: Dataset | None = None) -> "PseudoSettings":
    """config.pseudo's settings; with `dataset`, rounds=-1 (auto) resolved by resolve_rounds."""
    given = defaults.complete(config).pseudo
    settings = {f.name: type(f.default)(given[f.name]) for f in dataclasses.fields(cls)}
    if dataset is not None:
      settings["rounds"] = resolve_rounds(settings["rounds"], dataset)[0]
    return cls(**settings)


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
  n_sets, class_level = positives_lib.class_level_pair_sets(dataset)
  if not n_sets:
    return 0, "auto: no pair sets"
  if class_level:
    return 0, "auto: class-level pair sets " + ", ".join(class_level)
  return AUTO_ROUNDS, f"auto: all {n_sets} pair sets instance-level"


def _unit(x: np.ndarray) -> np.ndarray:
  return unit_rows(np.asarray(x, np.float64))


def mutual_nn(zq: np.ndarray, zg: np.ndarray) -> np.ndarray:
  """[m, 2] (query row, gallery row) that are each other's nearest neighbour by cosine."""
  s = _unit(zq) @ _unit(zg).T
  fwd, back = np.argmax(s, 1), np.argmax(s, 0)
  i = np.nonzero(back[fwd] == np.arange(len(zq)))[0]
  return np.stack([i, fwd[i]], 1)


def sinkhorn_plan(
  zq: np.ndarray, zg: np.ndarray, epsilon: float = 0.02, iters: int = 200, tol: float = 1e-3
) -> np.ndarray:
  """Entropic OT plan [n_q, n_g] between uniform marginals, cost 1 - cos (Sinkhorn in float32,
  jitted; stops once the row marginals are within `tol` (relative) of uniform).

  Runs in the scaling domain (u = a / K v, v = b / K^T u: two matrix-vector products per
  iteration) with each row's kernel divided by its largest entry, exp(-(C_ij - min_j C_ij) / eps),
  so every row keeps an entry of 1; several times faster on CPU than the log domain, which
  evaluates an exp per entry per iteration. Where that still under- or overflows (a gallery row
  far from every query at a small epsilon) it falls back to the log domain. Inputs are padded
  to multiples of SINKHORN_BUCKET rows (padding carries no mass), so pools of slightly
  different sizes share one compiled program."""
  cost = (1.0 - _unit(zq) @ _unit(zg).T).astype(np.float32)
  n, m = cost.shape
  rows, cols = (
    -(-n // SINKHORN_BUCKET) * SINKHORN_BUCKET,
    -(-m // SINKHORN_BUCKET) * SINKHORN_BUCKET,
  )
  padded = np.zeros((rows, cols), np.float32)
  padded[:n, :m] = cost
  plan = np.asarray(
    _sinkhorn_scaling_jit(
      padded, np.int32(n), np.int32(m), np.float32(epsilon), int(iters), np.float32(tol)
    )
  )[:n, :m]
  if not np.all(np.isfinite(plan)) or not plan.any():
    plan = np.asarray(_sinkhorn_jit(cost, np.float32(epsilon), int(iters), np.float32(tol)))
  return plan


SINKHORN_BUCKET = (
  128  # sinkhorn_plan pads both sides to a multiple of this (one compile per bucket)
)


@functools.partial(jax.jit, static_argnums=(4,))
def _sinkhorn_scaling_jit(cost, n, m, epsilon, iters, tol):
  """Scaling-domain Sinkhorn on a padded cost [N, M] whose first n rows and m columns are real."""
  real_rows = jnp.arange(cost.shape[0]) < n
  real_cols = jnp.arange(cost.shape[1]) < m
  real = real_rows[:, None] & real_cols[None, :]
  shift = jnp.min(jnp.where(real, cost, jnp.inf), axis=1, keepdims=True)
  kernel = jnp.where(
    real, jnp.exp(-(cost - jnp.where(real_rows[:, None], shift, 0.0)) / epsilon), 0.0
  )
  a = jnp.where(real_rows, 1.0 / n.astype(jnp.float32), 0.0)
  b = jnp.where(real_cols, 1.0 / m.astype(jnp.float32), 0.0)

  def scale(mass, total):  # mass / total on real entries, 0 on padding
    return jnp.where(mass > 0, mass / jnp.where(mass > 0, total, 1.0), 0.0)

  def ten(carry):
    it, u, v, _ = carry
    for _ in range(10):
      u = scale(a, kernel @ v)
      v = scale(
        b, u @ kernel
      )  # (not kernel.T @ u: XLA on CPU would transpose the kernel each time)
    rows = u * (kernel @ v) * n.astype(jnp.float32)  # 1 at convergence
    return it + 10, u, v, jnp.max(jnp.where(real_rows, jnp.abs(rows - 1.0), 0.0))

  def more(carry):
    it, _, _, err = carry
    return (it < iters) & (err >= tol)

  init = (
    jnp.int32(0),
    jnp.zeros(cost.shape[0], jnp.float32),
    real_cols.astype(jnp.float32),
    jnp.float32(jnp.inf),
  )
  _, u, v, _ = jax.lax.while_loop(more, ten, init)
  return u[:, None] * kernel * v[None, :]


@functools.partial(jax.jit, static_argnums=(2,))
def _sinkhorn_jit(cost, epsilon, iters, tol):
  log_k = -cost / epsilon
  n, m = cost.shape
  log_a, log_b = -jnp.log(jnp.float32(n)), -jnp.log(jnp.float32(m))

  def ten(carry):
    it, f, g, _ = carry
    for _ in range(10):
      f = log_a - jax.nn.logsumexp(log_k + g[None, :], axis=1)
      g = log_b - jax.nn.logsumexp(log_k + f[:, None], axis=0)
    rows = jnp.exp(f + jax.nn.logsumexp(log_k + g[None, :], axis=1)) * n  # 1 at convergence
    return it + 10, f, g, jnp.max(jnp.abs(rows - 1.0))

  def more(carry):
    it, _, _, err = carry
    return (it < iters) & (err >= tol)

  init = (jnp.int32(0), jnp.zeros(n, jnp.float32), jnp.zeros(m, jnp.float32), jnp.float32(jnp.inf))
  _, f, g, _ = jax.lax.while_loop(more, ten, init)
  return jnp.exp(log_k + f[:, None] + g[None, :])


def sinkhorn_matches(zq: np.ndarray, zg: np.ndarray, epsilon: float = 0.02) -> np.ndarray:
  """[m, 2] rows matched by the OT plan: mutual argmax of the plan (a global assignment: each row's
  mass goes where the others' does not, which NN matching cannot see)."""
  plan = sinkhorn_plan(zq, zg, epsilon)
  fwd, back = np.argmax(plan, 1), np.argmax(plan, 0)
  i = np.nonzero(back[fwd] == np.arange(len(zq)))[0]
  return np.stack([i, fwd[i]], 1)


def match(
  zq: np.ndarray, zg: np.ndarray, method: str = "sinkhorn", epsilon: float = 0.02
) -> np.ndarray:
  """[m, 2] (query row, gallery row) matches of zq [n_q, d] and zg [n_g, d] (cosine)."""
  if method == "sinkhorn":
    return sinkhorn_matches(zq, zg, epsilon)
  if method == "mutual_nn":
    return mutual_nn(zq, zg)
  raise ValueError(f"match method {method!r}: choose one of {', '.join(METHODS)}")


def unpaired_train_rows(dataset: Dataset, modality: str, partner: str) -> np.ndarray:
  """Train rows of `modality` in no pair with `partner` (rows already paired need no
  pseudo-pair)."""
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
  pairs: np.ndarray  # [m, 2] agreed (row of a, row of b)
  candidates: int  # matches found in b's space
  agreement: float  # fraction of them found again in a's space
  accepted: bool
  precision: float | None = None  # true fraction correct, where ids say (reported, never used)
  estimate: float | None = None  # label-free precision estimate the probe gate used
  via: str = ""  # "" (matched directly) or the path a composed match followed
  held: tuple[int, int] | None = None  # translators' own (correct, matched) on held-back pairs


def _agreed(za, zb, wb, wa, settings: PseudoSettings) -> tuple[np.ndarray, int, float]:
  """(agreed [m, 2] (query row, gallery row), candidates, agreement) of matching in both spaces."""
  m_ab = match(za, zb, settings.method, settings.epsilon)
  m_ba = match(wb, wa, settings.method, settings.epsilon)
  back = {int(j): int(k) for j, k in m_ba}  # row of b -> row of a
  agree = np.asarray([back.get(int(j)) == int(k) for k, j in m_ab], bool)
  agreement = float(agree.mean()) if len(m_ab) else 0.0
  return (m_ab[agree] if len(m_ab) else np.zeros((0, 2), np.int64)), len(m_ab), agreement


def probe_precision(
  dataset: Dataset,
  a: str,
  b: str,
  rows_a: np.ndarray,
  rows_b: np.ndarray,
  settings: PseudoSettings,
  seed: int = 0,
  extra: np.ndarray | None = None,
) -> float | None:
  """Label-free estimate of the precision of matching unpaired rows of a and b (the probe gate).

  The pair set's own train pairs are split in `pseudo.probe_folds` folds; for each fold a ridge map
  a -> b (and b -> a) is fitted on the other folds, the held-out pairs are hidden among the unpaired
  rows (rows_a, rows_b: the pools the real matching uses) and matched exactly as the real matching
  does (both spaces, agreed matches). The estimate is the fraction of agreed held-out rows matched
  to their own partner. A linear map is weaker than a trained translator, so the estimate is on the
  conservative side. extra: [k, 2] pseudo-pairs of an earlier round, added to every fold's fit
  (never
  held out). None when the pair set has fewer than 4 pairs per fold."""
  pairs = dataset.pairs_for(a, b)
  folds = int(settings.probe_folds)
  if len(pairs) < 4 * folds:
    return None
  rng = np.random.default_rng([int(seed), len(pairs)] + [ord(c) for c in a + "|" + b])
  order = rng.permutation(len(pairs))
  ea, eb = dataset.modalities[a].emb, dataset.modalities[b].emb
  correct = matched = 0
  for f in range(folds):
    held = pairs[order[f::folds]]
    fit = pairs[np.setdiff1d(order, order[f::folds])]
    if extra is not None and len(extra):
      fit = np.concatenate([fit, extra])
    ab = baselines_lib.fit_ridge_cv(_unit(ea[fit[:, 0]]), _unit(eb[fit[:, 1]]))
    ba = baselines_lib.fit_ridge_cv(_unit(eb[fit[:, 1]]), _unit(ea[fit[:, 0]]))
    qa = np.concatenate([held[:, 0], rows_a])
    gb = np.concatenate([held[:, 1], rows_b])
    xa, xb = _unit(ea[qa]), _unit(eb[gb])
    agreed, _, _ = _agreed(ab.apply(xa), xb, ba.apply(xb), xa, settings)
    mine = agreed[agreed[:, 0] < len(held)]
    matched += len(mine)
    correct += int(np.sum(mine[:, 0] == mine[:, 1]))
  return correct / matched if matched else 0.0


def translator_precision(
  aligner,
  dataset: Dataset,
  a: str,
  b: str,
  held: np.ndarray,
  rows_a: np.ndarray,
  rows_b: np.ndarray,
  settings: PseudoSettings,
) -> tuple[int, int]:
  """(correct, matched) of the trained translators themselves on pairs held back from their
  training (held [h, 2], training/selection.py), hidden among the unpaired rows the real matching
  uses and matched exactly as those are (both spaces, agreed matches). The ridge probe measures
  its own map; where that map beats the translators (low dims, few pairs) it over-estimates their
  precision, this does not."""
  xa = dataset.modalities[a].emb[np.concatenate([held[:, 0], rows_a])]
  xb = dataset.modalities[b].emb[np.concatenate([held[:, 1], rows_b])]
  za, zb = aligner.encode(a, b, aligner.default_route(a, b), xa, xb)
  wb, wa = aligner.encode(b, a, aligner.default_route(b, a), xb, xa)
  agreed, _, _ = _agreed(za, zb, wb, wa, settings)
  mine = agreed[agreed[:, 0] < len(held)]
  return int(np.sum(mine[:, 0] == mine[:, 1])), len(mine)


MIN_HELD_MATCHES = 4  # held-back matches the translators' own estimate needs to count


def _true_precision(dataset: Dataset, a: str, b: str, pairs: np.ndarray) -> float | None:
  ids_a, ids_b = dataset.modalities[a].ids, dataset.modalities[b].ids
  if ids_a is None or ids_b is None or not len(pairs):
    return None
  return float(np.mean(ids_a[pairs[:, 0]] == ids_b[pairs[:, 1]]))


def pseudo_pairs(
  aligner,
  dataset: Dataset,
  settings: PseudoSettings,
  seed: int = 0,
  earlier: list[EdgeMatches] = (),
  holdout=None,
) -> list[EdgeMatches]:
  """Gated matches of unpaired train rows for pairs of modalities (see the module docstring).

  gate "agreement": every pair of modalities is matched along the aligner's default route and gated
  by two-sided agreement. gate "probe": only paired modalities are matched (one hop: their
  translator
  was trained on pairs), each gated by probe_precision; with new_edges, never-paired modalities get
  composed matches (compose_matches) gated by the product of the hops' estimates. earlier: the
  previous round's matches; the probe's ridge maps also fit its accepted pseudo-pairs, as the
  translators being probed were trained on them. holdout (training/selection.PairHoldout): pairs
  held back from the translators' training; where at least MIN_HELD_MATCHES of them are matched,
  the estimate is at most the translators' own precision on them (translator_precision)."""
  previous = {(m.a, m.b): m.pairs for m in earlier if m.accepted and not m.via}
  out = []
  names = dataset.names
  probe = settings.gate == "probe"
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      paired = bool(dataset.pairs_for(a, b).size)
      if not paired and (probe or not settings.new_edges):
        continue
      route_ab, route_ba = aligner.default_route(a, b), aligner.default_route(b, a)
      if route_ab is None or route_ba is None:
        continue
      rows_a = _subsample(unpaired_train_rows(dataset, a, b), settings.max_rows, seed, a + b)
      rows_b = _subsample(unpaired_train_rows(dataset, b, a), settings.max_rows, seed, b + a)
      if len(rows_a) < 2 or len(rows_b) < 2:
        continue
      xa, xb = dataset.modalities[a].emb[rows_a], dataset.modalities[b].emb[rows_b]
      za, zb = aligner.encode(a, b, route_ab, xa, xb)  # compared where a's route meets b
      wb, wa = aligner.encode(b, a, route_ba, xb, xa)  # and where b's route meets a
      kept, candidates, agreement = _agreed(za, zb, wb, wa, settings)
      pairs = (
        np.stack([rows_a[kept[:, 0]], rows_b[kept[:, 1]]], 1)
        if len(kept)
        else np.zeros((0, 2), int)
      )
      if probe:
        estimate = probe_precision(
          dataset, a, b, rows_a, rows_b, settings, seed, previous.get((a, b))
        )
        held = holdout.held_for(a, b) if holdout is not None else np.zeros((0, 2), np.int64)
        own = None
        if estimate is not None and len(held):
          own = translator_precision(aligner, dataset, a, b, held, rows_a, rows_b, settings)
          if own[1] >= MIN_HELD_MATCHES:
            estimate = min(estimate, own[0] / own[1])
        accepted = estimate is not None and estimate >= settings.min_precision and len(pairs) >= 2
      else:
        estimate = None
        accepted = agreement >= settings.min_agreement and len(pairs) >= 2
      out.append(
        EdgeMatches(
          a,
          b,
          pairs,
          candidates,
          agreement,
          accepted,
          _true_precision(dataset, a, b, pairs),
          estimate,
          held=own if probe else None,
        )
      )
  if probe and settings.new_edges:
    out += compose_matches(dataset, out, settings)
  return out


def compose_matches(
  dataset: Dataset, direct: list[EdgeMatches], settings: PseudoSettings
) -> list[EdgeMatches]:
  """Matches between never-paired modalities, composed hop by hop along the fewest-hop path of the
  paired-data graph: a row of a follows its link (a train pair, or an accepted pseudo-pair) to b,
  then b's row its link to c, ... Each link is right with probability 1 (a train pair) or its hop's
  probe estimate (a pseudo-pair); a composed pair set's estimate is the mean over its rows of the
  product along the row's links, gated by `pseudo.min_precision`, and by its size: a new edge needs
  at least `pseudo.min_new_pairs` pairs (-1: as many as the data's smallest pair set), since an edge
  trained on a handful of pairs would become the one-hop route between its modalities and cut off
  the better-supported multi-hop routes. One row of a keeps one chain; a row of the far end reached
  twice keeps the likelier chain (pairs stay one-to-one)."""
  links: dict[tuple[str, str], dict[int, tuple[int, float]]] = {}

  def add(u, v, pairs, p):
    fwd, back = links.setdefault((u, v), {}), links.setdefault((v, u), {})
    for x, y in pairs:
      x, y = int(x), int(y)
      if fwd.get(x, (None, -1.0))[1] < p:
        fwd[x] = (y, p)
      if back.get(y, (None, -1.0))[1] < p:
        back[y] = (x, p)

  for a, b in dataset.pairs:
    add(a, b, dataset.pairs_for(a, b), 1.0)
  for m in direct:
    if m.accepted and m.estimate is not None:
      add(m.a, m.b, m.pairs, float(m.estimate))
  graph = dataset.default_graph()
  min_pairs = settings.min_new_pairs
  if min_pairs < 0:
    min_pairs = min(len(dataset.pairs_for(a, b)) for a, b in dataset.pairs)
  min_pairs = max(min_pairs, 2)
  out = []
  names = dataset.names
  for i, a in enumerate(names):
    for c in names[i + 1 :]:
      if dataset.pairs_for(a, c).size or graph.hop_distance(a, c) is None:
        continue
      path = graph.shortest_path(a, c)
      chains = {}
      for row in np.nonzero(dataset.modalities[a].train)[0]:
        node, p = int(row), 1.0
        for u, v in zip(path[:-1], path[1:]):
          nxt = links.get((u, v), {}).get(node)
          if nxt is None:
            break
          node, p = nxt[0], p * nxt[1]
        else:
          if node not in chains or chains[node][1] < p:
            chains[node] = (int(row), p)
      if not chains:
        continue
      pairs = np.asarray([(r, end) for end, (r, _) in sorted(chains.items())], np.int64)
      estimate = float(np.mean([p for _, p in chains.values()]))
      out.append(
        EdgeMatches(
          a,
          c,
          pairs,
          len(pairs),
          1.0,
          estimate >= settings.min_precision and len(pairs) >= min_pairs,
          _true_precision(dataset, a, c, pairs),
          estimate,
          via="->".join(path),
        )
      )
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
    gate = (
      f"estimate {m.estimate:.2f}" if m.estimate is not None else f"agreement {m.agreement:.2f}"
    )
    via = f" via {m.via}" if m.via else ""
    if m.held is not None:
      via += f", held-back {m.held[0]}/{m.held[1]}"
    parts.append(f"{m.a}-{m.b} {'+' if m.accepted else '-'}{len(m.pairs)} ({gate}{via}{prec})")
  return "; ".join(parts)


def self_train(
  config,
  dataset: Dataset,
  train_round: Callable[[Dataset, int], object],
  make_aligner: Callable[[object], object],
  log: Callable[[str], None] = print,
  holdout=None,
):
  """Train, then `pseudo.rounds` times: grow the data with gated pseudo-pairs and train again.

  train_round(dataset, round) -> result; make_aligner(result) -> aligner. Returns (result, data
  of the last round, [per round: {modality pair: what the gate decided}] for report.json).
  pseudo.rounds=-1 (auto) is resolved on `dataset` (resolve_rounds).
  holdout: the pairs held back from every round's training (the gate also reads them)."""
  settings = PseudoSettings.from_config(config, dataset)
  result = train_round(dataset, 0)
  grown = dataset
  matches: list[EdgeMatches] = []
  history: list[dict] = []
  for r in range(1, settings.rounds + 1):
    aligner = make_aligner(result)
    t0 = time.perf_counter()
    matches = pseudo_pairs(
      aligner,
      dataset,
      settings,
      seed=int(config.seed) + r,
      earlier=matches,
      holdout=holdout,
    )
    log(f"pseudo-pairs round {r} (matched in {time.perf_counter() - t0:.1f}s): {describe(matches)}")
    history.append({f"{m.a}-{m.b}": summary(m) for m in matches})
    grown = grow(dataset, matches)
    if grown.pairs.keys() == dataset.pairs.keys() and all(
      len(grown.pairs[k]) == len(dataset.pairs[k]) for k in grown.pairs
    ):
      log("pseudo-pairs: no modality pair passed the gate; keeping the model")
      break
    result = train_round(grown, r)
  return result, grown, history


def summary(m: EdgeMatches) -> dict:
  """One gate decision as report.json records it."""
  out = {"accepted": bool(m.accepted), "pairs": int(len(m.pairs))}
  for key in ("estimate", "precision"):
    if getattr(m, key) is not None:
      out[key if key == "estimate" else "true_precision"] = round(float(getattr(m, key)), 3)
  if m.held is not None:
    out["held_back_correct"], out["held_back_matched"] = m.held
  if m.via:
    out["via"] = m.via
  return out
