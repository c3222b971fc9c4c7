"""Query-bank hubness correction (eval.querybank_k): known answer, never reads the test queries,
the auto rule, the config check and the report's record."""

import numpy as np
import pytest

from graphbridge.runs import validate as validate_lib
from graphbridge.data import readers as readers_lib
from graphbridge import defaults
from graphbridge.evaluation import hubness as hubness_lib
from graphbridge.evaluation import encoding as encoding_lib
from graphbridge.evaluation import retrieval as retrieval_lib
from graphbridge.core.errors import ConfigError
from graphbridge.evaluation import report as report_lib


class _Identity:
  """Both modalities already live in one space: encode = unit rows (any route)."""

  name = "identity"

  def default_route(self, query, gallery):
    return f"{query}->{gallery}"

  def encode(self, query, gallery, route, xq, xg):
    unit = lambda x: np.asarray(x, np.float32) / np.linalg.norm(x, axis=1, keepdims=True)
    return unit(xq), unit(xg)


def _hub_data(n_test=8, n_train=40, d=16, seed=0):
  """Test gallery rows b_i = e_i (i < 8) plus one hub row h = ones / 4, the direction every query
  shares. Test query a_i = e_i + 1.5 h: its own partner has cosine 0.69 and the hub 0.88, so without
  correction the hub is every query's first answer. Train queries e_j + 1.5 h (j >= 8) are near
  the hub too (cosine 0.88) but far from every b_i (0.19): penalties r(h) = 0.88, r(b_i) = 0.19, and
  cos - r/2 ranks each partner first (0.59 against 0.44)."""
  rng = np.random.default_rng(seed)
  hub = np.ones(d) / np.sqrt(d)
  e = np.eye(d)[:n_test]
  a_test = e + 1.5 * hub
  a_train = (
    np.eye(d)[n_test + rng.integers(0, d - n_test, n_train)]
    + 1.5 * hub
    + 0.01 * rng.normal(size=(n_train, d))
  )
  b_test = np.concatenate([e + 0.01 * rng.normal(size=e.shape), hub[None]])
  b_train = rng.normal(size=(n_train, d))
  a = np.concatenate([a_test, a_train])
  b = np.concatenate([b_test, b_train])
  ids_a = np.arange(len(a))
  ids_b = np.concatenate([np.arange(n_test), [10_000], 20_000 + np.arange(n_train)])
  pairs = np.stack([np.arange(n_test, n_test + 20), n_test + 1 + np.arange(20)], 1)
  arrays = {
    "a_emb": a,
    "b_emb": b,
    "a_id": ids_a,
    "b_id": ids_b,
    "a_test": np.arange(len(a)) < n_test,
    "a_train": np.arange(len(a)) >= n_test,
    "b_test": np.arange(len(b)) <= n_test,
    "b_train": np.arange(len(b)) > n_test,
    "pairs_a__b": pairs,
  }
  return readers_lib.from_arrays(arrays)


def _r1(rows, query="a", gallery="b"):
  return [
    r for r in rows if (r["query"], r["gallery"], r["level"]) == (query, gallery, "instance")
  ][0]["R@1"]


def test_the_query_bank_pushes_a_hub_down():
  dataset = _hub_data()
  plain = retrieval_lib.retrieval_rows(
    _Identity(), dataset, split="test", ks=(1,), pairs=[("a", "b")]
  )
  banked = retrieval_lib.retrieval_rows(
    _Identity(), dataset, split="test", ks=(1,), pairs=[("a", "b")], querybank_k=5
  )
  assert _r1(plain) == 0.0  # the hub is every query's first answer
  assert _r1(banked) == 1.0  # with the hub's penalty each query finds its own partner


def test_the_query_bank_never_reads_the_test_queries():
  dataset = _hub_data()
  enc = encoding_lib.encode_route(
    _Identity(), dataset, encoding_lib.RouteSpec("a", "b", "a->b"), "test"
  )
  zq, zg = hubness_lib.querybank_scores(_Identity(), dataset, enc, enc.zq, 5)
  # the gallery side (and so every score) is the same whatever test queries are scored with it
  zq_half, zg_half = hubness_lib.querybank_scores(_Identity(), dataset, enc, enc.zq[:3], 5)
  np.testing.assert_array_equal(zg, zg_half)
  np.testing.assert_allclose(zq_half @ zg_half.T, (zq @ zg.T)[:3], atol=1e-6)
  # CSLS, the transductive form, changes with the query set
  _, g_all = hubness_lib.csls_transform(enc.zq, enc.zg, 5)
  _, g_half = hubness_lib.csls_transform(enc.zq[:3], enc.zg, 5)
  assert not np.allclose(g_all, g_half)
  # scores follow cos - r/2
  bank = enc.zq  # not used: recompute r from the train rows
  mq = dataset.modalities["a"]
  zb = _Identity().encode("a", "b", "a->b", mq.emb[mq.train], enc.zg[:2])[0]
  r = hubness_lib.knn_mean_similarity(enc.zg, zb, 5)
  scores = zq @ zg.T
  expected = enc.zq @ enc.zg.T - r[None, :] / 2
  order = np.argsort(-scores, axis=1)
  np.testing.assert_array_equal(order, np.argsort(-expected, axis=1))
  del bank


def test_auto_is_on_for_instance_pairs_and_off_for_class_pairs_or_csls():
  instance = _hub_data()
  assert hubness_lib.resolve_querybank(-1, instance)[0] == hubness_lib.QUERYBANK_K
  assert hubness_lib.resolve_querybank(-1, instance, csls_k=10)[0] == 0
  assert hubness_lib.resolve_querybank(3, instance) == (3, "asked for")
  assert hubness_lib.resolve_querybank(0, instance)[0] == 0
  assert (
    hubness_lib.resolve_querybank(-1, instance, split="train")[0] == 0
  )  # the bank is the train rows
  assert hubness_lib.resolve_querybank(-1, instance, split="all")[0] == 0
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 10)
  arrays = {
    "x_emb": rng.normal(size=(40, 5)),
    "y_emb": rng.normal(size=(40, 4)),
    "x_label": labels,
    "y_label": labels,
    "pairs_x__y": np.stack([np.arange(40), rng.permutation(40)], 1),
  }
  arrays["pairs_x__y"] = np.stack(
    [
      np.arange(40),
      np.concatenate([rng.permutation(np.nonzero(labels == c)[0]) for c in range(4)]),
    ],
    1,
  )
  class_level = readers_lib.from_arrays(arrays)
  assert hubness_lib.resolve_querybank(-1, class_level)[0] == 0


def test_config_check_on_querybank_k():
  c = defaults.base_config()
  assert c.eval.querybank_k == -1
  validate_lib.validate(c)
  for bad in (-2, -10):
    c.eval.querybank_k = bad
    with pytest.raises(ConfigError, match="eval.querybank_k"):
      validate_lib.validate(c)
  c.eval.querybank_k, c.eval.csls_k = 10, 10
  with pytest.raises(ConfigError, match="choose one"):
    validate_lib.validate(c)


def test_the_report_records_the_query_bank():
  dataset = _hub_data()
  rep = report_lib.build_report(
    _Identity(), dataset, options=report_lib.EvalOptions(tables=("retrieval",))
  )
  assert rep.summary["querybank_k"] == hubness_lib.QUERYBANK_K
  assert rep.summary["querybank"].startswith("on, k=10")
  off = report_lib.build_report(
    _Identity(), dataset, options=report_lib.EvalOptions(tables=("retrieval",), querybank_k=0)
  )
  assert off.summary["querybank_k"] == 0
  md = report_lib.markdown(rep.summary, {}, "t")
  assert "query-bank correction" in md and "query-bank correction" not in report_lib.markdown(
    off.summary, {}, "t"
  )
