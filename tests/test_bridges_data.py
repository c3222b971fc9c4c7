"""The bridge benchmark sets (mv6, mv8, fsdd_chain), the linear chain / oracle baselines, and the
benchmark's scoring helpers. Fast: no training."""

import importlib.util
import os

import numpy as np
import pytest

from graphbridge.linear import baselines as baselines_lib
from graphbridge.data import readers as readers_lib
from graphbridge.evaluation import retrieval as retrieval_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"mv6": ("tree", 6, 120), "mv8": ("tree", 8, 120), "fsdd_chain": ("chain", 4, 300)}


def _load_module(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module", params=sorted(SHAPES))
def named(request):
  return request.param, readers_lib.load_named(request.param)


def test_loads_with_ids_labels_splits_and_no_nans(named):
  name, ds = named
  shape, n_mod, _ = SHAPES[name]
  assert len(ds.names) == n_mod
  with np.load(readers_lib.NAMED_DATASETS[name]) as z:
    for m in ds.names:
      assert np.isfinite(z[f"{m}_emb"].astype(np.float32)).all(), m
  dims = {mod.dim for mod in ds.modalities.values()}
  assert len(dims) == n_mod  # mixed dims
  n = len(next(iter(ds.modalities.values())))
  for m, mod in ds.modalities.items():
    assert np.isfinite(mod.emb).all()
    assert sorted(mod.ids.tolist()) == list(range(n)), f"{m}: every instance exactly once"
    assert (
      mod.labels is not None and not (mod.train & mod.test).any() and (mod.train | mod.test).all()
    )
  first = ds.modalities[ds.names[0]]
  for m, mod in ds.modalities.items():  # the split follows the instance, the row order does not
    assert np.array_equal(mod.train[np.argsort(mod.ids)], first.train[np.argsort(first.ids)])
    assert np.array_equal(mod.labels[np.argsort(mod.ids)], first.labels[np.argsort(first.ids)])
  assert any(not np.array_equal(mod.ids, first.ids) for mod in ds.modalities.values())
  if name == "fsdd_chain":  # FSDD's documented split: takes 0-4 of every digit and speaker are test
    assert int(first.test.sum()) == 300 and int(first.train.sum()) == 2700


def test_pairs_follow_the_stated_shape_on_disjoint_train_slices(named):
  name, ds = named
  shape, n_mod, per_edge = SHAPES[name]
  edges = list(ds.pairs)
  assert len(edges) == n_mod - 1
  graph = ds.default_graph()
  for a in ds.names:  # connected with n-1 edges: a tree
    for b in ds.names:
      if a != b:
        assert graph.hop_distance(a, b) is not None
  degree = {m: sum(m in e for e in edges) for m in ds.names}
  if shape == "chain":
    assert sorted(degree.values()) == [1, 1] + [2] * (n_mod - 2)
  else:
    assert max(degree.values()) >= 3  # a tree that is not a chain
  seen = set()
  for (a, b), pairs in ds.pairs.items():
    ma, mb = ds.modalities[a], ds.modalities[b]
    assert len(pairs) == per_edge
    assert np.array_equal(ma.ids[pairs[:, 0]], mb.ids[pairs[:, 1]]), "pairs join the same instance"
    assert ma.train[pairs[:, 0]].all() and mb.train[pairs[:, 1]].all(), "only train rows are paired"
    ids = set(ma.ids[pairs[:, 0]].tolist())
    assert not ids & seen, f"{a}-{b} shares instances with another edge"
    seen |= ids
  for m, mod in ds.modalities.items():
    paired = {
      int(r)
      for (a, b), p in ds.pairs.items()
      for col, x in enumerate((a, b))
      if x == m
      for r in p[:, col]
    }
    assert len(paired) < 0.5 * mod.train.sum(), f"{m}: most train rows are unpaired"
  never = [(a, b) for a in ds.names for b in ds.names if a < b and graph.hop_distance(a, b) >= 2]
  assert len(never) == n_mod * (n_mod - 1) // 2 - (n_mod - 1)


def test_mv6_rebuild_is_identical():
  build = _load_module(os.path.join(ROOT, "tools", "build_bridges.py"), "build_bridges")
  arrays = build.build("mv6")
  with np.load(readers_lib.NAMED_DATASETS["mv6"]) as z:
    assert set(z.files) == set(arrays)
    for k in arrays:
      assert np.array_equal(z[k], arrays[k]), k


def test_configs_differ_from_digits_only_in_data():
  load = lambda n: (
    _load_module(os.path.join(ROOT, "configs", f"{n}.py"), f"cfg_{n}").get_config().to_dict()
  )
  digits = load("digits")
  for name in SHAPES:
    c = load(name)
    assert c["data"].pop("name") == name
    expected = dict(digits, data={k: v for k, v in digits["data"].items() if k != "name"})
    assert c == expected


# ---- baselines on synthetic data --------------------------------------------------------------


def _synthetic(n=600, seed=0, lossy_middle=False):
  """a, b, c views of one latent; pairs a-b and b-c on disjoint train slices (a chain)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 12))
  q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  a = z
  b = (
    z @ q
    if not lossy_middle
    else z[:, :3] @ rng.normal(size=(3, 12)) + 0.3 * rng.normal(size=(n, 12))
  )
  c = z @ rng.normal(size=(12, 10))
  ids = np.arange(n)
  test = np.zeros(n, bool)
  test[: n // 4] = True
  train_ids = ids[~test]
  arrays = {
    "pairs_a__b": np.stack([train_ids[:150]] * 2, 1),
    "pairs_b__c": np.stack([train_ids[150:300]] * 2, 1),
  }
  for m, x in (("a", a), ("b", b), ("c", c)):
    arrays.update(
      {
        f"{m}_emb": x.astype(np.float32),
        f"{m}_id": ids,
        f"{m}_label": ids % 5,
        f"{m}_train": ~test,
        f"{m}_test": test,
      }
    )
  return readers_lib.from_arrays(arrays), q


def test_linear_maps_recover_a_known_map():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 8))
  q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  fit = baselines_lib.fit_procrustes_any(x, 2.0 * x @ q + 0.5)
  assert np.allclose(fit.w, q, atol=1e-8) and fit.scale == pytest.approx(2.0)
  w = rng.normal(size=(8, 5))
  ridge = baselines_lib.fit_ridge_cv(x, x @ w + 0.01 * rng.normal(size=(200, 5)))
  assert np.abs(ridge.coef - w).max() < 0.02
  assert baselines_lib.ridge_loo_alpha(x, x @ w) == min(
    baselines_lib.RIDGE_ALPHAS
  )  # noiseless: least penalty
  ds, _ = _synthetic()
  for kind in baselines_lib.KINDS:  # b = a rotated: one hop is exact, retrieval is perfect
    chain = baselines_lib.ChainAligner(ds, kind)
    rows = [
      r
      for r in retrieval_lib.retrieval_rows(chain, ds)
      if r["level"] == "instance" and (r["query"], r["gallery"]) == ("a", "b")
    ]
    assert rows and rows[0]["R@1"] == 1.0, kind


def test_chain_follows_the_tree_path_and_oracle_uses_withheld_instance_pairs():
  ds, _ = _synthetic(lossy_middle=True)
  chain = baselines_lib.ChainAligner(ds, "ridge")
  assert chain.default_route("a", "c") == "a->b<-c"  # meet in the middle, as the graph's best_route
  oracle = baselines_lib.OracleAligner(ds)
  pairs = oracle.pairs("a", "c")
  assert oracle.n_pairs == 150 and len(pairs) == 150
  ma, mc = ds.modalities["a"], ds.modalities["c"]
  assert np.array_equal(ma.ids[pairs[:, 0]], mc.ids[pairs[:, 1]]) and ma.train[pairs[:, 0]].all()
  assert np.array_equal(
    np.sort(oracle.pairs("c", "a")[:, 0]), np.sort(pairs[:, 1])
  )  # same instances
  scores = {}
  for aligner in (chain, oracle):
    rows = [
      r
      for r in retrieval_lib.retrieval_rows(aligner, ds)
      if r["level"] == "instance" and r["hops"] == 2
    ]
    scores[aligner.name] = np.mean([r["mAP"] for r in rows])
  assert scores["oracle-ridge"] > scores["ridge-chain"] + 0.2, (
    scores
  )  # the lossy middle view hurts chains


def test_withheld_pairs_are_class_level_without_ids():
  ds = readers_lib.load_named("digits")
  pairs = baselines_lib.withheld_pairs(ds, "image", "audio", 100)
  assert len(pairs) == 100
  assert np.array_equal(
    ds.modalities["image"].labels[pairs[:, 0]], ds.modalities["audio"].labels[pairs[:, 1]]
  )
  assert (
    ds.modalities["image"].train[pairs[:, 0]].all()
    and ds.modalities["audio"].train[pairs[:, 1]].all()
  )


# ---- benchmark helpers --------------------------------------------------------------------------


def test_benchmark_mrr_and_overrides():
  bench = _load_module(os.path.join(ROOT, "benchmarks", "bridges.py"), "bench_bridges")
  zq = np.eye(3)
  zg = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float)  # query 0 finds its match second
  assert bench.mrr(zq, zg, np.array([0, 1, 2]), np.array([0, 1, 2])) == pytest.approx(
    (0.5 + 0.5 + 1) / 3
  )
  assert bench.parse_assignments("loss.cycle_weights=(1.0, 0.5),strategy=pivot,train.steps=10") == {
    "loss.cycle_weights": (1.0, 0.5),
    "strategy": "pivot",
    "train.steps": 10,
  }
  rows = [
    {"method": "m", "level": "instance", "hops": h, "MRR": v}
    for h, v in ((1, 0.9), (2, 0.4), (3, 0.2))
  ]
  assert bench.by_hops(rows, "m", "instance", "MRR") == {
    1: 0.9,
    2: 0.4,
    3: 0.2,
    "never": pytest.approx(0.3),
  }


def test_benchmark_recognises_methods_that_resolve_to_one_run():
  """`pair` on instance-level pairs is what `auto` picks anyway: one run, rows reused; on the
  class-level digits pairs the two differ (and pivot differs from default everywhere)."""
  bench = _load_module(os.path.join(ROOT, "benchmarks", "bridges.py"), "bench_bridges")
  for name, same in (("mv6", True), ("digits", False)):
    ds = readers_lib.load_named(name)
    keys = {m: bench.resolved_key(bench.make_config(name, o), ds) for m, o in bench.METHODS.items()}
    assert (keys["default"] == keys["pair"]) is same
    assert keys["default"] != keys["pivot"]


def test_shapes_benchmark_builds_loadable_sets_of_the_stated_shapes(tmp_path):
  """benchmarks/shapes.py: every shape is a valid .npz of the stated size (no training here)."""
  shapes = _load_module(os.path.join(ROOT, "benchmarks", "shapes.py"), "bench_shapes")
  expected = {
    "two_5_5000": (2, 1),
    "chain_few": (3, 2),
    "star_class": (4, 3),
    "tree6": (6, 5),
    "cycle10": (10, 10),
  }
  for shape, (n_modalities, n_pair_sets) in expected.items():
    path = str(tmp_path / f"{shape}.npz")
    np.savez(path, **shapes.build(shape))
    ds = readers_lib.load(path)
    assert len(ds.names) == n_modalities and len(ds.pairs) == n_pair_sets, shape
  dims = {
    m.emb.shape[1] for m in readers_lib.load(str(tmp_path / "two_5_5000.npz")).modalities.values()
  }
  assert dims == {5, 5000}
