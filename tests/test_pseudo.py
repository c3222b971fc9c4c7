"""Pseudo-pairs: OT / mutual-NN matching and the per-pair agreement gate have known answers."""

import numpy as np
import pytest

from graphbridge.data import readers as readers_lib
from graphbridge.strategies import pseudo as pseudo_lib


def _rotation(d, rng):
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  return q


@pytest.mark.parametrize("method", ["sinkhorn", "mutual_nn"])
def test_matching_recovers_the_permutation_of_rotated_data(method):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(80, 12))
  rot = _rotation(12, rng)
  perm = rng.permutation(80)
  y = (x @ rot)[perm]  # y[j] = x[perm[j]] rotated
  found = pseudo_lib.match(x @ rot, y, method)
  assert len(found) == 80
  np.testing.assert_array_equal(perm[found[:, 1]], found[:, 0])


def test_sinkhorn_plan_has_uniform_marginals_and_beats_nn_on_a_hub():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(30, 6))
  plan = pseudo_lib.sinkhorn_plan(x, x + 0.1 * rng.normal(size=x.shape), epsilon=0.05)
  np.testing.assert_allclose(plan.sum(1), 1 / 30, rtol=1e-2)
  np.testing.assert_allclose(plan.sum(0), 1 / 30, rtol=1e-3)
  # a shared offset makes row 0 of the gallery everyone's nearest neighbour; the assignment, which
  # must spend each gallery row once, still pairs every row with its own
  hub_q = x + 0.0
  hub_g = x + 0.25 * rng.normal(size=x.shape)
  hub_g[0] = hub_q.mean(0) * 4
  nn = pseudo_lib.mutual_nn(hub_q, hub_g)
  ot = pseudo_lib.sinkhorn_matches(hub_q, hub_g, epsilon=0.02)
  assert np.mean(ot[:, 0] == ot[:, 1]) == 1.0
  assert len(ot) >= len(nn)


@pytest.mark.parametrize("n_q, n_g", [(130, 130), (200, 131), (257, 300)])
def test_sinkhorn_scaling_domain_equals_the_log_domain_on_padded_shapes(n_q, n_g):
  """The default (scaling domain, padded to SINKHORN_BUCKET) gives the log domain's plan; sizes that
  are not multiples of the bucket, square and not."""
  rng = np.random.default_rng(n_q + n_g)
  x = rng.normal(size=(n_q, 16))
  y = x[rng.integers(0, n_q, n_g)] @ _rotation(16, rng) + 0.8 * rng.normal(size=(n_g, 16))
  plan = pseudo_lib.sinkhorn_plan(x, y, epsilon=0.02)
  cost = (1.0 - pseudo_lib._unit(x) @ pseudo_lib._unit(y).T).astype(np.float32)
  log_plan = np.asarray(pseudo_lib._sinkhorn_jit(cost, np.float32(0.02), 200, np.float32(1e-3)))
  assert plan.shape == (n_q, n_g)
  np.testing.assert_allclose(plan, log_plan, rtol=1e-3, atol=1e-6 * log_plan.max())
  np.testing.assert_allclose(plan.sum(0), 1 / n_g, rtol=1e-3)


def test_sinkhorn_falls_back_to_the_log_domain_where_the_kernel_underflows():
  """At a tiny epsilon a gallery row far from every query has an all-zero scaled kernel column; the
  plan is still finite, with uniform column marginals, from the log domain."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(40, 8)) + 3.0
  y = np.concatenate(
    [x[:39] + 0.05 * rng.normal(size=(39, 8)), -x[39:]]
  )  # the last row: opposite all
  plan = pseudo_lib.sinkhorn_plan(x, y, epsilon=0.002)
  assert np.all(np.isfinite(plan))
  np.testing.assert_allclose(plan.sum(0), 1 / 40, rtol=1e-2)


class _LinearAligner:
  """Exact maps between views: b = a @ rot; c is unrelated to both (random features)."""

  name = "exact"

  def __init__(self, rot):
    self.rot = rot

  def default_route(self, q, g):
    return f"{q}->{g}"

  def encode(self, q, g, route, xq, xg):
    if (q, g) == ("a", "b"):
      return xq @ self.rot, xg
    if (q, g) == ("b", "a"):
      return xq @ self.rot.T, xg
    proj = np.random.default_rng(abs(hash((q, g))) % 2**32).normal(size=(xq.shape[1], xg.shape[1]))
    return xq @ proj, xg


def _data(n=120, seed=0):
  rng = np.random.default_rng(seed)
  rot = _rotation(8, rng)
  a = rng.normal(size=(n, 8))
  rows = np.arange(n)
  perm_b, perm_c = rng.permutation(n), rng.permutation(n)  # rows shuffled per view; ids say which
  arrays = {
    "a_emb": a,
    "a_id": rows,
    "b_emb": (a @ rot)[perm_b],
    "b_id": perm_b,
    "c_emb": rng.normal(size=(n, 8))[perm_c],
    "c_id": perm_c,
  }
  inv_b, inv_c = np.argsort(perm_b), np.argsort(perm_c)
  arrays["pairs_a__b"] = np.stack([rows[:10], inv_b[:10]], 1)
  arrays["pairs_a__c"] = np.stack([rows[10:20], inv_c[10:20]], 1)
  return readers_lib.from_arrays(arrays), rot


def test_gate_accepts_a_strongly_related_pair_and_rejects_an_unrelated_one():
  dataset, rot = _data()
  settings = pseudo_lib.PseudoSettings(
    rounds=1, method="sinkhorn", min_agreement=0.5, gate="agreement"
  )
  found = {(m.a, m.b): m for m in pseudo_lib.pseudo_pairs(_LinearAligner(rot), dataset, settings)}
  ab, ac = found[("a", "b")], found[("a", "c")]
  assert ab.accepted and ab.agreement > 0.95 and ab.precision == 1.0 and len(ab.pairs) >= 100
  assert not ac.accepted and ac.agreement < 0.5
  assert ("b", "c") in found and not found[("b", "c")].accepted
  grown = pseudo_lib.grow(dataset, list(found.values()))
  assert len(grown.pairs[("a", "b")]) == 10 + len(ab.pairs)
  assert len(grown.pairs[("a", "c")]) == 10
  with pytest.raises(ValueError, match="pseudo.method='ot'"):
    pseudo_lib.PseudoSettings(method="ot")


class _ViewsAligner:
  """Exact maps between views that are rotations of one latent (b, c); d is unrelated to all."""

  name = "views"

  def __init__(self, rots):
    self.rots = rots  # view -> rotation from a's space (a: identity)

  def default_route(self, q, g):
    return f"{q}->{g}"

  def encode(self, q, g, route, xq, xg):
    if q in self.rots and g in self.rots:
      return xq @ self.rots[q].T @ self.rots[g], xg
    proj = np.random.default_rng(len(q) * 7 + len(g)).normal(size=(xq.shape[1], xg.shape[1]))
    return xq @ proj, xg


def _views(n=400, pairs=40, seed=0):
  """a, b = a rot_b, c = a rot_c (+ a little noise), d unrelated; pairs a-b, a-c, a-d on disjoint
  slices of `pairs` rows each; rows shuffled per view (ids say which)."""
  rng = np.random.default_rng(seed)
  rots = {"a": np.eye(8), "b": _rotation(8, rng), "c": _rotation(8, rng)}
  lat = rng.normal(size=(n, 8))
  arrays, inv = {}, {}
  for v in "abcd":
    perm = rng.permutation(n)
    emb = lat @ rots[v] + 0.05 * rng.normal(size=(n, 8)) if v in rots else rng.normal(size=(n, 8))
    arrays[f"{v}_emb"], arrays[f"{v}_id"] = emb[perm], perm
    inv[v] = np.argsort(perm)
  ids = np.arange(n)
  for k, v in enumerate("bcd"):
    sl = ids[k * pairs : (k + 1) * pairs]
    arrays[f"pairs_a__{v}"] = np.stack([inv["a"][sl], inv[v][sl]], 1)
  return readers_lib.from_arrays(arrays), rots


def test_probe_gate_estimates_precision_from_held_out_pairs_and_composes_new_edges():
  dataset, rots = _views()
  settings = pseudo_lib.PseudoSettings(rounds=1, gate="probe", min_precision=0.5)
  found = {(m.a, m.b): m for m in pseudo_lib.pseudo_pairs(_ViewsAligner(rots), dataset, settings)}
  ab, ac, ad = found[("a", "b")], found[("a", "c")], found[("a", "d")]
  # paired hops: the probe's estimate (held-out pairs hidden among ~280 unpaired rows) says b and c
  # match a exactly and d does not
  assert ab.estimate > 0.9 and ac.estimate > 0.9 and ad.estimate < 0.2
  assert ab.accepted and ac.accepted and not ad.accepted
  assert ab.precision == 1.0 and len(ab.pairs) > 300
  # never-paired b-c: composed through a (b's rows -> a's pair or pseudo-pair -> c), all right;
  # b-d and c-d are composed only through a-d's 40 train pairs (its matches were rejected): right
  bc = found[("b", "c")]
  assert bc.via == "b->a->c" and bc.accepted and bc.precision == 1.0 and len(bc.pairs) > 300
  for far in (found[("b", "d")], found[("c", "d")]):
    assert far.via and len(far.pairs) <= 40 and far.precision > 0.9
  # the probe never matches never-paired modalities directly
  assert all(m.via for (a, b), m in found.items() if not dataset.pairs_for(a, b).size)
  grown = pseudo_lib.grow(dataset, list(found.values()))
  assert len(grown.pairs[("b", "c")]) == len(bc.pairs)
  with pytest.raises(ValueError, match="pseudo.gate='best'"):
    pseudo_lib.PseudoSettings(gate="best")


def test_probe_needs_enough_pairs_to_hold_out():
  dataset, rots = _views(pairs=10)
  settings = pseudo_lib.PseudoSettings(rounds=1, gate="probe", probe_folds=4)
  found = {(m.a, m.b): m for m in pseudo_lib.pseudo_pairs(_ViewsAligner(rots), dataset, settings)}
  assert found[("a", "b")].estimate is None and not found[("a", "b")].accepted


class _WrongAligner(_ViewsAligner):
  """A translator a<->b worse than the probe's ridge map: b's rotation replaced by another one."""

  def __init__(self, rots, rng):
    super().__init__({**rots, "b": _rotation(8, rng)})


def test_probe_gate_is_capped_by_the_translators_own_held_back_precision():
  """Low dims, a ridge map that fits b = a rot exactly, translators that do not: the probe alone
  estimates ~1 and accepts noise; with pairs held back from the translators' training, their own
  precision on them (~0) caps the estimate and the gate rejects."""
  from graphbridge.training import selection

  dataset, rots = _views()
  aligner = _WrongAligner(rots, np.random.default_rng(7))
  settings = pseudo_lib.PseudoSettings(rounds=1, gate="probe", min_precision=0.5, new_edges=False)
  alone = {(m.a, m.b): m for m in pseudo_lib.pseudo_pairs(aligner, dataset, settings)}
  assert alone[("a", "b")].estimate > 0.9 and alone[("a", "b")].accepted
  assert alone[("a", "b")].precision < 0.2  # what was accepted is noise
  holdout = selection.PairHoldout.choose(dataset, seed=0)
  capped = {
    (m.a, m.b): m for m in pseudo_lib.pseudo_pairs(aligner, dataset, settings, holdout=holdout)
  }
  ab, ac = capped[("a", "b")], capped[("a", "c")]
  assert ab.held[1] >= pseudo_lib.MIN_HELD_MATCHES and ab.estimate < 0.3 and not ab.accepted
  assert ac.estimate > 0.9 and ac.accepted and ac.held == (6, 6)  # right translators: unchanged
  assert "held-back 6/6" in pseudo_lib.describe([ac])
