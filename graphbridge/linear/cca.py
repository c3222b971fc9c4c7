"""Regularised CCA and the CCA pivot bridge."""

from __future__ import annotations

import dataclasses
from typing import Any
import numpy as np
from graphbridge.linear.arrays import (
  validate_bridge_inputs,
  as_matrix,
  check_dim,
  check_paired,
  check_reg,
  frozen_array,
  inv_sqrt_psd,
  out_dtype,
  regularised_cov,
)


__all__ = ["CCA", "CCABridge", "fit_cca", "fit_cca_bridge"]


@dataclasses.dataclass(frozen=True, eq=False)
class CCA:
  """Regularised canonical correlation analysis between paired x and y.

  Canonical variates: ``u = (x - x_mean) @ wx``, ``v = (y - y_mean) @ wy``.
  On the training data (with reg -> 0) the columns of u (and of v) are
  uncorrelated with unit variance (ddof=1) and ``corr(u_i, v_i) =
  correlations[i]``.

  Attributes:
    x_mean: [d_x] float64.
    y_mean: [d_y] float64.
    wx: [d_x, k] float64 projection of centred x.
    wy: [d_y, k] float64 projection of centred y.
    correlations: [k] float64 canonical correlations, descending, in [0, 1].
  """

  x_mean: np.ndarray
  y_mean: np.ndarray
  wx: np.ndarray
  wy: np.ndarray
  correlations: np.ndarray

  @property
  def n_components(self) -> int:
    return int(self.correlations.shape[0])

  def apply_x(self, x: Any, *, scale_by_sqrt_corr: bool = False) -> np.ndarray:
    """Project x into the shared canonical space.

    Args:
      x: [n, d_x] float32.
      scale_by_sqrt_corr: if True multiply component i by
        ``sqrt(correlations[i])`` so weakly correlated components count less
        in cosine / dot-product comparisons.
    Returns:
      [n, k] canonical variates.
    """
    xf = as_matrix(x, "x")
    check_dim(xf, self.wx.shape[0], "x", "CCA (x side)")
    out = (xf - self.x_mean) @ self.wx
    if scale_by_sqrt_corr:
      out = out * np.sqrt(self.correlations)
    return out.astype(out_dtype(x), copy=False)

  def apply_y(self, y: Any, *, scale_by_sqrt_corr: bool = False) -> np.ndarray:
    """Project y into the shared canonical space.

    Args:
      y: [n, d_y] float32.
      scale_by_sqrt_corr: see :meth:`apply_x`.
    Returns:
      [n, k] canonical variates.
    """
    yf = as_matrix(y, "y")
    check_dim(yf, self.wy.shape[0], "y", "CCA (y side)")
    out = (yf - self.y_mean) @ self.wy
    if scale_by_sqrt_corr:
      out = out * np.sqrt(self.correlations)
    return out.astype(out_dtype(y), copy=False)


def _check_n_components(
  n_components: Any, n: int, d_x: int, d_y: int, x_name: str, y_name: str
) -> int:
  if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
    raise ValueError(f"n_components must be an int, got {n_components!r}")
  k = int(n_components)
  max_k = min(d_x, d_y, n - 1)
  if k < 1 or k > max_k:
    raise ValueError(
      f"n_components={k} is not allowed: it must be in [1, min(d_{x_name}, d_{y_name}, n-1)]"
      f" = [1, {max_k}] (d_{x_name}={d_x}, d_{y_name}={d_y}, n={n} paired rows)"
    )
  return k


def _fit_cca_core(
  xf: np.ndarray, yf: np.ndarray, k: int, reg: float, x_name: str, y_name: str
) -> tuple[CCA, np.ndarray]:
  """CCA on validated float64 arrays. Also returns the regularised y covariance."""
  n = xf.shape[0]
  x_mean = xf.mean(axis=0)
  y_mean = yf.mean(axis=0)
  xc = xf - x_mean
  yc = yf - y_mean
  cov_xx = regularised_cov(xc, reg, x_name)
  cov_yy = regularised_cov(yc, reg, y_name)
  cov_xy = xc.T @ yc / (n - 1)
  whiten_x = inv_sqrt_psd(cov_xx, x_name, reg)
  whiten_y = inv_sqrt_psd(cov_yy, y_name, reg)
  u, s, vt = np.linalg.svd(whiten_x @ cov_xy @ whiten_y, full_matrices=False)
  wx = whiten_x @ u[:, :k]
  wy = whiten_y @ vt[:k].T
  # Deterministic signs: largest-magnitude entry of each wx column positive.
  signs = np.sign(wx[np.argmax(np.abs(wx), axis=0), np.arange(k)])
  signs[signs == 0] = 1.0
  wx = wx * signs
  wy = wy * signs
  correlations = np.clip(s[:k], 0.0, 1.0)
  cca = CCA(
    x_mean=frozen_array(x_mean),
    y_mean=frozen_array(y_mean),
    wx=frozen_array(wx),
    wy=frozen_array(wy),
    correlations=frozen_array(correlations),
  )
  return cca, cov_yy


def fit_cca(x: Any, y: Any, n_components: int, reg: float = 1e-3) -> CCA:
  """Regularised CCA by whitening each side and an SVD of the cross-covariance.

  With ``Cxx, Cyy, Cxy`` the (ddof=1) covariances, each auto-covariance is
  regularised as ``C + reg * (trace(C) / d) * I`` (so ``reg`` is relative to
  the mean variance and the fit is invariant to a global rescaling of x or
  y). Then ``T = Cxx^-1/2 Cxy Cyy^-1/2 = U S V^T`` and
  ``wx = Cxx^-1/2 U[:, :k]``, ``wy = Cyy^-1/2 V[:, :k]``, correlations
  ``S[:k]``. Signs are fixed so the largest-magnitude entry of each ``wx``
  column is positive.

  Args:
    x: [n, d_x] float32.
    y: [n, d_y] float32, paired row-for-row with x.
    n_components: k, 1 <= k <= min(d_x, d_y, n - 1).
    reg: relative ridge on each auto-covariance, >= 0. With reg=0 a
      rank-deficient covariance (e.g. n <= d) raises a ValueError.
  Returns:
    CCA with ``x_mean`` [d_x], ``y_mean`` [d_y], ``wx`` [d_x, k],
    ``wy`` [d_y, k], ``correlations`` [k].
  """
  reg = check_reg(reg)
  xf = as_matrix(x, "x", min_rows=2)
  yf = as_matrix(y, "y", min_rows=2)
  check_paired(xf, yf, "x", "y")
  k = _check_n_components(n_components, xf.shape[0], xf.shape[1], yf.shape[1], "x", "y")
  cca, _ = _fit_cca_core(xf, yf, k, reg, "x", "y")
  return cca


@dataclasses.dataclass(frozen=True, eq=False)
class CCABridge:
  """CCA bridge A -> B <- C; outputs live in B's whitened space.

  ``to_pivot_a(a) = a @ a_weight + a_offset`` (likewise for c), and
  ``to_pivot_b(b) = (b - pivot_mean) @ pivot_whitening`` puts raw B rows in
  the same coordinates, so A->B, C->B and A<->C retrieval all compare by
  cosine in one space.

  Attributes:
    pivot_mean: [d_b] float64 mean of all pivot rows (both pair sets pooled).
    pivot_whitening: [d_b, d_b] float64 symmetric inverse square root of the
      pooled regularised pivot covariance.
    a_weight: [d_a, d_b] float64, a_offset: [d_b] float64.
    c_weight: [d_c, d_b] float64, c_offset: [d_b] float64.
    a_cca: CCA between A and whitened B (for inspection: correlations etc.).
    c_cca: CCA between C and whitened B.
  """

  pivot_mean: np.ndarray
  pivot_whitening: np.ndarray
  a_weight: np.ndarray
  a_offset: np.ndarray
  c_weight: np.ndarray
  c_offset: np.ndarray
  a_cca: CCA
  c_cca: CCA

  def to_pivot_a(self, a: Any) -> np.ndarray:
    """a: [n, d_a] -> [n, d_b] predicted whitened pivot coordinates."""
    af = as_matrix(a, "a")
    check_dim(af, self.a_weight.shape[0], "a", "CCABridge (A side)")
    return (af @ self.a_weight + self.a_offset).astype(out_dtype(a), copy=False)

  def to_pivot_c(self, c: Any) -> np.ndarray:
    """c: [n, d_c] -> [n, d_b] predicted whitened pivot coordinates."""
    cf = as_matrix(c, "c")
    check_dim(cf, self.c_weight.shape[0], "c", "CCABridge (C side)")
    return (cf @ self.c_weight + self.c_offset).astype(out_dtype(c), copy=False)

  def to_pivot_b(self, b: Any) -> np.ndarray:
    """b: [n, d_b] raw pivot rows -> [n, d_b] whitened pivot coordinates.

    Caveat: whitening gives B's low-variance (often noise) directions unit
    variance, while ``to_pivot_a`` / ``to_pivot_c`` predictions lie in the
    span of the top canonical directions only, so A->B retrieval in this
    space is weaker than A<->C retrieval (for A->B use :func:`fit_cca` or
    :func:`fit_ridge` directly).
    """
    bf = as_matrix(b, "b")
    check_dim(bf, self.pivot_mean.shape[0], "b", "CCABridge (pivot)")
    return ((bf - self.pivot_mean) @ self.pivot_whitening).astype(out_dtype(b), copy=False)


def _cca_regression_map(
  xf: np.ndarray, bwf: np.ndarray, k: int, reg: float, x_name: str
) -> tuple[np.ndarray, np.ndarray, CCA]:
  """Rank-k CCA regression x -> whitened pivot: returns (weight [d_x, d_b], offset [d_b], cca)."""
  cca, cov_bb = _fit_cca_core(xf, bwf, k, reg, x_name, "whitened pivot rows")
  # E[bw | x] restricted to the top-k canonical pairs:
  #   bw_hat = bw_mean + (x - x_mean) wx diag(rho) wy^T Cbb
  weight = (cca.wx * cca.correlations) @ (cca.wy.T @ cov_bb)
  offset = cca.y_mean - cca.x_mean @ weight
  return weight, offset, cca


def fit_cca_bridge(
  a_rows: Any,
  b_rows_for_a: Any,
  c_rows: Any,
  b_rows_for_c: Any,
  n_components: int,
  reg: float = 1e-3,
) -> CCABridge:
  """CCA bridge A -> B <- C from A-B and C-B pairs only.

  Mapping (chosen to put A and C in one well-defined space):

  1. Pivot whitening. Pool all pivot rows (``b_rows_for_a`` and
     ``b_rows_for_c``), take their mean ``mb`` and the symmetric inverse
     square root ``Wb`` of their regularised covariance; the pivot space is
     ``bw = (b - mb) @ Wb`` (identity covariance, so no B direction dominates
     cosine similarity merely by having high variance, and both CCAs share
     these coordinates).
  2. Fit ``CCA(A, bw)`` and ``CCA(C, bw)`` with ``n_components`` each.
  3. Map each side into the pivot space by *CCA regression* (the rank-k
     reduced-rank regression of bw on A under the bw-covariance metric):
     ``bw_hat = mean_bw + (a - ma) wx diag(rho) wy^T Cbw``. In the CCA's own
     whitened-B coordinates this is ``V_k diag(rho) u``: the canonical
     variates of A, shrunk by their correlations (``E[v_i | u_i] =
     rho_i u_i``), placed along B's canonical directions. With k equal to
     the full rank it reduces to (regularised) least-squares regression.

  A <-> C retrieval compares ``to_pivot_a(a)`` with ``to_pivot_c(c)`` by
  cosine; ``to_pivot_b(b)`` embeds raw pivot rows in the same space.

  Args:
    a_rows: [n_ab, d_a] float32 A rows paired with ``b_rows_for_a``.
    b_rows_for_a: [n_ab, d_b] float32.
    c_rows: [n_cb, d_c] float32 C rows paired with ``b_rows_for_c``.
    b_rows_for_c: [n_cb, d_b] float32 (same pivot space).
    n_components: k for both CCAs, 1 <= k <= min(d_a, d_c, d_b, n_ab-1, n_cb-1).
    reg: relative covariance ridge (see :func:`fit_cca`), also used for the
      pivot whitening.
  Returns:
    CCABridge.
  """
  reg = check_reg(reg)
  a, ba, c, bc = validate_bridge_inputs(a_rows, b_rows_for_a, c_rows, b_rows_for_c, 2)
  _check_n_components(n_components, a.shape[0], a.shape[1], ba.shape[1], "a", "b")
  k = _check_n_components(n_components, c.shape[0], c.shape[1], bc.shape[1], "c", "b")

  pooled = np.concatenate([ba, bc], axis=0)
  pivot_mean = pooled.mean(axis=0)
  cov_pooled = regularised_cov(pooled - pivot_mean, reg, "pivot rows (b_rows_for_a + b_rows_for_c)")
  pivot_whitening = inv_sqrt_psd(cov_pooled, "pivot rows (b_rows_for_a + b_rows_for_c)", reg)

  a_weight, a_offset, a_cca = _cca_regression_map(
    a, (ba - pivot_mean) @ pivot_whitening, k, reg, "a_rows"
  )
  c_weight, c_offset, c_cca = _cca_regression_map(
    c, (bc - pivot_mean) @ pivot_whitening, k, reg, "c_rows"
  )
  return CCABridge(
    pivot_mean=frozen_array(pivot_mean),
    pivot_whitening=frozen_array(pivot_whitening),
    a_weight=frozen_array(a_weight),
    a_offset=frozen_array(a_offset),
    c_weight=frozen_array(c_weight),
    c_offset=frozen_array(c_offset),
    a_cca=a_cca,
    c_cca=c_cca,
  )
