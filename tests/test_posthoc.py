"""Tests for graphbridge.linear (posthoc, cca) (scipy / scikit-learn used only as references)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.linalg
from sklearn.cross_decomposition import CCA as SkCCA
from sklearn.linear_model import Ridge as SkRidge

from graphbridge.linear.cca import fit_cca, fit_cca_bridge
from graphbridge.linear.posthoc import (
  fit_centering,
  fit_procrustes,
  fit_ridge,
  fit_ridge_bridge,
  paired_rows,
)
from graphbridge.linear import cca as cca_lib
from graphbridge.linear import posthoc


def _l2n(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _modality_gap(x: np.ndarray, y: np.ndarray) -> float:
  """Distance between the centroids of the L2-normalised rows."""
  return float(np.linalg.norm(_l2n(x).mean(axis=0) - _l2n(y).mean(axis=0)))


def _recall_at_1(queries: np.ndarray, gallery: np.ndarray) -> float:
  """Instance-level R@1 by cosine; query i's correct match is gallery row i."""
  sims = _l2n(queries) @ _l2n(gallery).T
  return float(np.mean(np.argmax(sims, axis=1) == np.arange(len(queries))))


# --------------------------------------------------------------------------- #
# Centering
# --------------------------------------------------------------------------- #


def test_centering_zero_mean_unit_rows_and_gap_reduction():
  rng = np.random.default_rng(0)
  d = 16
  base = rng.normal(size=(300, d))
  # Two modalities of the same content, each shifted by its own large offset
  # (the "modality gap" cone effect), then L2-normalised.
  x = _l2n(base + 4.0 * _l2n(rng.normal(size=(1, d))) + 0.1 * rng.normal(size=(300, d)))
  y = _l2n(base + 4.0 * _l2n(rng.normal(size=(1, d))) + 0.1 * rng.normal(size=(300, d)))
  cx, cy = fit_centering(x), fit_centering(y)

  assert cx.mean.shape == (d,)
  np.testing.assert_allclose(cx.mean, x.mean(axis=0), atol=1e-12)
  # Zero mean before re-normalisation.
  np.testing.assert_allclose((x - cx.mean).mean(axis=0), 0.0, atol=1e-12)

  xc, yc = cx.apply(x), cy.apply(y)
  np.testing.assert_allclose(np.linalg.norm(xc, axis=1), 1.0, atol=1e-12)
  gap_before = _modality_gap(x, y)
  gap_after = _modality_gap(xc, yc)
  assert gap_before > 0.5
  assert gap_after < 0.2 * gap_before
  # Paired retrieval improves too (shared content survives centring).
  assert _recall_at_1(xc, yc) >= _recall_at_1(x, y)


def test_centering_dtype_zero_rows_and_frozen():
  x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
  c = fit_centering(x)
  out = c.apply(np.vstack([x, c.mean[None, :].astype(np.float32)]))
  assert out.dtype == np.float32
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[2], 0.0)  # row equal to the mean -> zeros, not NaN
  assert c.apply(x.astype(np.float64)).dtype == np.float64
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.mean = np.zeros(2)  # type: ignore[misc]
  with pytest.raises(ValueError):
    c.mean[0] = 1.0  # stored arrays are read-only
  with pytest.raises(ValueError, match="columns"):
    c.apply(np.ones((3, 5)))


# --------------------------------------------------------------------------- #
# Procrustes
# --------------------------------------------------------------------------- #


def test_procrustes_recovers_known_rotation_and_matches_scipy():
  rng = np.random.default_rng(1)
  d = 12
  rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
  x = rng.normal(size=(100, d))
  y = x @ rot
  p = fit_procrustes(x, y)
  np.testing.assert_allclose(p.rotation, rot, atol=1e-6)
  np.testing.assert_allclose(p.apply(x), y, atol=1e-6)
  np.testing.assert_allclose(p.rotation.T @ p.rotation, np.eye(d), atol=1e-10)

  # Noisy data: same answer as scipy.
  y_noisy = y + 0.3 * rng.normal(size=y.shape)
  p_noisy = fit_procrustes(x, y_noisy)
  ref, _ = scipy.linalg.orthogonal_procrustes(x, y_noisy)
  np.testing.assert_allclose(p_noisy.rotation, ref, atol=1e-10)


def test_procrustes_center_and_scale():
  rng = np.random.default_rng(2)
  d = 8
  rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
  x = rng.normal(size=(50, d)) + 3.0
  shift = rng.normal(size=d)
  y = 2.5 * (x - x.mean(0)) @ rot + shift
  p = fit_procrustes(x, y, center=True, scale=True)
  np.testing.assert_allclose(p.rotation, rot, atol=1e-6)
  assert p.scale == pytest.approx(2.5, abs=1e-9)
  np.testing.assert_allclose(p.apply(x), y, atol=1e-6)
  # Without centring, an offset cannot be represented.
  p0 = fit_procrustes(x, y)
  assert p0.scale == 1.0
  assert np.abs(p0.apply(x) - y).max() > 1e-2


def test_procrustes_dimension_mismatch_is_a_clear_error():
  with pytest.raises(ValueError, match="same dimension.*fit_cca or fit_ridge"):
    fit_procrustes(np.ones((5, 3)), np.ones((5, 4)))
  with pytest.raises(ValueError, match="paired row-for-row.*5 rows.*6"):
    fit_procrustes(np.ones((5, 3)), np.ones((6, 3)))


# --------------------------------------------------------------------------- #
# CCA
# --------------------------------------------------------------------------- #


def _cca_data(seed: int = 3, n: int = 2000):
  rng = np.random.default_rng(seed)
  n_shared = 3
  z = rng.normal(size=(n, n_shared))
  strengths = np.array([3.0, 1.5, 0.7])  # distinct canonical correlations
  mx = rng.normal(size=(n_shared, 6))
  my = rng.normal(size=(n_shared, 5))
  x = (z * strengths) @ mx + rng.normal(size=(n, 6))
  y = (z * strengths) @ my + rng.normal(size=(n, 5))
  # Anisotropic scaling / offsets should not matter to CCA.
  x = x * np.array([1.0, 10.0, 0.1, 3.0, 1.0, 0.5]) + 7.0
  return x, y


def test_cca_matches_sklearn_and_training_projection_statistics():
  x, y = _cca_data()
  k = 3
  cca = fit_cca(x, y, n_components=k, reg=1e-10)
  assert cca.wx.shape == (6, k) and cca.wy.shape == (5, k)
  assert cca.correlations.shape == (k,)

  sk = SkCCA(n_components=k, max_iter=5000, tol=1e-12).fit(x, y)
  xs, ys = sk.transform(x, y)
  sk_corr = np.array([abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(k)])
  np.testing.assert_allclose(cca.correlations, sk_corr, atol=1e-3)

  # Projected training data: unit variance, uncorrelated columns, and the
  # per-component correlations are exactly the stored canonical correlations.
  u, v = cca.apply_x(x), cca.apply_y(y)
  np.testing.assert_allclose(np.cov(u, rowvar=False), np.eye(k), atol=1e-6)
  np.testing.assert_allclose(np.cov(v, rowvar=False), np.eye(k), atol=1e-6)
  np.testing.assert_allclose(u.mean(0), 0.0, atol=1e-9)
  emp = np.array([np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(k)])
  np.testing.assert_allclose(emp, cca.correlations, atol=1e-6)
  cross = np.cov(u, v, rowvar=False)[:k, k:]
  np.testing.assert_allclose(cross, np.diag(cca.correlations), atol=1e-6)


def test_cca_correlations_sorted_in_unit_interval_and_scaling_flag():
  x, y = _cca_data(seed=4, n=500)
  cca = fit_cca(x, y, n_components=5)  # default reg
  c = cca.correlations
  assert np.all(np.diff(c) <= 1e-12)
  assert np.all((c >= 0.0) & (c <= 1.0))
  assert cca.n_components == 5
  u = cca.apply_x(x)
  us = cca.apply_x(x, scale_by_sqrt_corr=True)
  np.testing.assert_allclose(us, u * np.sqrt(c), atol=1e-12)
  vs = cca.apply_y(y, scale_by_sqrt_corr=True)
  assert vs.shape == (500, 5)
  assert cca.apply_x(x.astype(np.float32)).dtype == np.float32


def test_cca_reg_makes_wide_data_fittable_and_k_is_bounded():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(10, 30))
  y = rng.normal(size=(10, 20))
  with pytest.raises(ValueError, match="singular.*increase reg"):
    fit_cca(x, y, n_components=2, reg=0.0)
  cca = fit_cca(x, y, n_components=9, reg=1e-1)
  assert np.all(np.isfinite(cca.wx))
  with pytest.raises(ValueError, match=r"n_components=10 is not allowed.*\[1, 9\]"):
    fit_cca(x, y, n_components=10)
  with pytest.raises(ValueError, match="n_components=0"):
    fit_cca(x, y, n_components=0)
  with pytest.raises(ValueError, match="reg must be"):
    fit_cca(x, y, n_components=2, reg=-1.0)


# --------------------------------------------------------------------------- #
# Ridge
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n,d_x", [(200, 15), (20, 50)])  # normal-equation and SVD paths
@pytest.mark.parametrize("alpha", [1e-3, 1.0, 30.0])
def test_ridge_matches_sklearn(n, d_x, alpha):
  rng = np.random.default_rng(6)
  x = rng.normal(size=(n, d_x)) * 2.0 + 1.0
  y = x @ rng.normal(size=(d_x, 7)) + 0.5 * rng.normal(size=(n, 7)) - 3.0
  r = fit_ridge(x, y, alpha)
  sk = SkRidge(alpha=alpha, fit_intercept=True).fit(x, y)
  np.testing.assert_allclose(r.coef, sk.coef_.T, atol=1e-6)
  np.testing.assert_allclose(r.intercept, sk.intercept_, atol=1e-6)
  np.testing.assert_allclose(r.apply(x), sk.predict(x), atol=1e-6)


def test_ridge_alpha_zero_is_least_squares():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(100, 5))
  y = rng.normal(size=(100, 3))
  r = fit_ridge(x, y, 0.0)
  xa = np.hstack([x, np.ones((100, 1))])
  sol, *_ = np.linalg.lstsq(xa, y, rcond=None)
  np.testing.assert_allclose(r.coef, sol[:5], atol=1e-10)
  np.testing.assert_allclose(r.intercept, sol[5], atol=1e-10)
  with pytest.raises(ValueError, match="alpha must be"):
    fit_ridge(x, y, -1.0)


# --------------------------------------------------------------------------- #
# paired_rows
# --------------------------------------------------------------------------- #


def test_paired_rows_gathers_and_checks_bounds():
  x_all = np.arange(12.0).reshape(4, 3)
  y_all = -np.arange(10.0).reshape(5, 2)
  pairs = np.array([[0, 4], [3, 0], [0, 1]])
  x, y = paired_rows(x_all, y_all, pairs)
  np.testing.assert_array_equal(x, x_all[[0, 3, 0]])
  np.testing.assert_array_equal(y, y_all[[4, 0, 1]])

  with pytest.raises(ValueError, match=r"pairs\[1, 1\] = 5 is out of bounds for y_all with 5 rows"):
    paired_rows(x_all, y_all, np.array([[0, 0], [1, 5]]))
  with pytest.raises(ValueError, match=r"pairs\[0, 0\] = -1 is out of bounds for x_all"):
    paired_rows(x_all, y_all, np.array([[-1, 0]]))
  with pytest.raises(ValueError, match=r"shape \[P, 2\]"):
    paired_rows(x_all, y_all, np.array([0, 1]))
  with pytest.raises(ValueError, match="integer"):
    paired_rows(x_all, y_all, np.array([[0.0, 1.0]]))
  with pytest.raises(ValueError, match="pairs is empty"):
    paired_rows(x_all, y_all, np.zeros((0, 2), dtype=int))


# --------------------------------------------------------------------------- #
# Pivot bridges
# --------------------------------------------------------------------------- #


def _bridge_data(seed: int = 8):
  """Shared latent z; A-B pairs and C-B pairs use DISJOINT items; A-C never paired."""
  rng = np.random.default_rng(seed)
  m, d_a, d_b, d_c = 8, 32, 24, 16
  ma, mb, mc = (rng.normal(size=(m, d)) for d in (d_a, d_b, d_c))

  def make(n, noise=0.5):
    z = rng.normal(size=(n, m))
    return (
      z @ ma + noise * rng.normal(size=(n, d_a)) + 2.0,
      z @ mb + noise * rng.normal(size=(n, d_b)) - 1.0,
      z @ mc + noise * rng.normal(size=(n, d_c)) + 0.5,
    )

  a_tr, b_for_a, _ = make(1000)
  _, b_for_c, c_tr = make(1000)
  a_te, b_te, c_te = make(200)
  return rng, (a_tr, b_for_a, c_tr, b_for_c), (a_te, b_te, c_te), m


def test_ridge_bridge_retrieves_a_to_c_far_above_chance():
  rng, train, (a_te, b_te, c_te), _ = _bridge_data()
  bridge = fit_ridge_bridge(*train, alpha=1.0)
  qa, gc = bridge.to_pivot_a(a_te), bridge.to_pivot_c(c_te)
  assert qa.shape == gc.shape == (200, 24)
  chance = 1.0 / 200
  r1 = _recall_at_1(qa, gc)
  r1_back = _recall_at_1(gc, qa)
  r1_random = _recall_at_1(a_te @ rng.normal(size=(32, 24)), c_te @ rng.normal(size=(16, 24)))
  assert r1 > 0.8 and r1_back > 0.8
  assert r1_random < 0.1
  assert r1 > 50 * chance
  np.testing.assert_array_equal(bridge.to_pivot_b(b_te), b_te)


def test_cca_bridge_retrieves_a_to_c_far_above_chance():
  rng, train, (a_te, b_te, c_te), m = _bridge_data()
  bridge = fit_cca_bridge(*train, n_components=m)
  qa, gc, gb = bridge.to_pivot_a(a_te), bridge.to_pivot_c(c_te), bridge.to_pivot_b(b_te)
  assert qa.shape == gc.shape == gb.shape == (200, 24)
  chance = 1.0 / 200
  r1_ac = _recall_at_1(qa, gc)
  r1_ca = _recall_at_1(gc, qa)
  # Into the pivot itself, same coordinates: weaker (whitening amplifies B's
  # noise directions, which the predictions do not contain) but far above chance.
  r1_ab = _recall_at_1(qa, gb)
  r1_random = _recall_at_1(a_te @ rng.normal(size=(32, 24)), c_te @ rng.normal(size=(16, 24)))
  assert r1_ac > 0.8 and r1_ca > 0.8 and r1_ab > 0.3
  assert r1_random < 0.1
  assert r1_ac > 50 * chance
  # The shared latent shows up as m strong canonical correlations on each side.
  assert np.all(bridge.a_cca.correlations > 0.9)
  assert np.all(bridge.c_cca.correlations > 0.9)


def test_cca_bridge_pivot_is_whitened_and_full_rank_equals_least_squares():
  _, (a_tr, b_for_a, c_tr, b_for_c), _, _ = _bridge_data(seed=9)
  bridge = fit_cca_bridge(a_tr, b_for_a, c_tr, b_for_c, n_components=16, reg=1e-10)
  pooled = bridge.to_pivot_b(np.vstack([b_for_a, b_for_c]))
  np.testing.assert_allclose(np.cov(pooled, rowvar=False), np.eye(24), atol=1e-6)
  # With k = full rank (d_c = 16 <= d_b) the CCA regression is plain least
  # squares of whitened B on C.
  ls = fit_ridge(c_tr, bridge.to_pivot_b(b_for_c), 0.0)
  np.testing.assert_allclose(bridge.c_weight, ls.coef, atol=1e-6)
  np.testing.assert_allclose(bridge.to_pivot_c(c_tr), ls.apply(c_tr), atol=1e-6)


def test_bridge_input_errors():
  _, (a, ba, c, bc), _, _ = _bridge_data()
  with pytest.raises(ValueError, match="a_rows and b_rows_for_a must be paired.*1000 rows.*999"):
    fit_ridge_bridge(a, ba[:-1], c, bc, 1.0)
  with pytest.raises(ValueError, match="same pivot space.*24 and 23"):
    fit_cca_bridge(a, ba, c, bc[:, :-1], n_components=4)
  with pytest.raises(ValueError, match=r"n_components=17.*min\(d_c, d_b, n-1\)"):
    fit_cca_bridge(a, ba, c, bc, n_components=17)
  bridge = fit_cca_bridge(a, ba, c, bc, n_components=4)
  with pytest.raises(ValueError, match="c has 32 columns.*16-dim"):
    bridge.to_pivot_c(a)


# --------------------------------------------------------------------------- #
# Input validation common to all fits
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
  "fit",
  [
    lambda x, y: fit_procrustes(x, y),
    lambda x, y: fit_cca(x, y, n_components=2),
    lambda x, y: fit_ridge(x, y, 1.0),
  ],
  ids=["procrustes", "cca", "ridge"],
)
def test_fit_input_validation(fit):
  rng = np.random.default_rng(10)
  x = rng.normal(size=(20, 4))
  y = rng.normal(size=(20, 4))
  with pytest.raises(ValueError, match="x is empty"):
    fit(np.zeros((0, 4)), np.zeros((0, 4)))
  with pytest.raises(ValueError, match=r"x must be a 2-D array.*x\[None, :\]|v\[None, :\]"):
    fit(x[0], y)
  with pytest.raises(ValueError, match="paired row-for-row.*20 rows.*19"):
    fit(x, y[:-1])
  x_bad = x.copy()
  x_bad[7, 2] = np.nan
  x_bad[12, 0] = np.inf
  with pytest.raises(ValueError, match="x contains NaN/inf.*2 row.*first bad row index is 7"):
    fit(x_bad, y)
  y_bad = y.copy()
  y_bad[3, 1] = -np.inf
  with pytest.raises(ValueError, match="y contains NaN/inf.*first bad row index is 3"):
    fit(x, y_bad)
  with pytest.raises(ValueError, match="real numeric"):
    fit(np.full((20, 4), "a"), y)


def test_centering_validation_and_min_rows():
  with pytest.raises(ValueError, match="x is empty"):
    fit_centering(np.zeros((0, 3)))
  with pytest.raises(ValueError, match="first bad row index is 1"):
    fit_centering(np.array([[0.0, 1.0], [np.nan, 0.0]]))
  with pytest.raises(ValueError, match="at least 2"):
    fit_cca(np.ones((1, 3)), np.ones((1, 3)), n_components=1)
  with pytest.raises(ValueError, match="zero variance"):
    fit_cca(np.ones((5, 3)), np.random.default_rng(0).normal(size=(5, 3)), n_components=1)


def test_public_api_listed():
  for module in (posthoc, cca_lib):
    assert module.__all__ and all(hasattr(module, name) for name in module.__all__)
