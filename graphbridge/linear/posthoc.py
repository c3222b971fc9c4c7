"""Post-hoc alignment of pre-computed embeddings, plus linear baselines.

Everything here works on plain arrays of already-computed embeddings and can be
applied after any training strategy:

* :func:`fit_centering` -- per-modality mean removal + row re-normalisation
  ("close the modality gap").
* :func:`fit_procrustes` -- orthogonal map ``x -> y`` for paired rows.
* :func:`fit_cca` -- regularised canonical correlation analysis.
* :func:`fit_ridge` -- multi-output ridge regression ``x -> y`` with intercept.
* :func:`paired_rows` -- gather paired rows of two modalities from an index array.
* :func:`fit_ridge_bridge` / :func:`fit_cca_bridge` -- linear pivot baselines that
  map modalities A and C into the space of a pivot modality B when only A-B and
  C-B pairs exist (A-C retrieval then compares in the pivot space by cosine).

Conventions
-----------
* Inputs are 2-D arrays ``[n, d]`` (numpy, jax or anything ``np.asarray``
  accepts). Fitting is done in float64; fitted parameters are stored as
  read-only float64 numpy arrays inside frozen dataclasses.
* ``apply`` methods return float64 for float64 input and float32 otherwise.
* Invalid input raises ``ValueError`` naming the argument and the problem
  (empty, not 2-D, NaN/inf with the first bad row, mismatched row counts of
  paired arrays, too many components for the available rank, ...).
* Only numpy is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any
import numpy as np

from graphbridge.core.rows import unit_rows
from graphbridge.linear.arrays import (
  validate_bridge_inputs,
  as_matrix,
  check_dim,
  check_paired,
  check_reg,
  frozen_array,
  out_dtype,
)


__all__ = [
  "Centering",
  "Procrustes",
  "Ridge",
  "RidgeBridge",
  "fit_centering",
  "fit_procrustes",
  "fit_ridge",
  "paired_rows",
  "fit_ridge_bridge",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Centering:
  """Per-modality mean removal followed by row L2 re-normalisation.

  Attributes:
    mean: [d] float64, the mean row of the fitting data.
  """

  mean: np.ndarray

  def apply(self, x: Any) -> np.ndarray:
    """Centre and re-normalise rows.

    Args:
      x: [n, d] float32 embeddings of the same modality as the fitting data.
    Returns:
      [n, d] rows ``(x - mean) / ||x - mean||``. Rows that coincide with the
      mean (zero norm after centring) are returned as zeros, not NaN.
    """
    xf = as_matrix(x, "x")
    check_dim(xf, self.mean.shape[0], "x", "Centering")
    xc = xf - self.mean
    out = unit_rows(xc, floor=np.finfo(xc.dtype).tiny)  # a row at the mean stays zero
    return out.astype(out_dtype(x), copy=False)


def fit_centering(x: Any) -> Centering:
  """Fit the "close the modality gap" step: centre a modality on its own mean.

  Fit one :class:`Centering` per modality. The mean is taken over ``x`` as
  given, so pass rows in the space you compare in (usually already
  L2-normalised embeddings); ``apply`` then removes that mean and
  re-normalises rows to unit length, so that the centroids of the modalities
  coincide (at the origin) before cosine retrieval.

  Args:
    x: [n, d] float32 embeddings of one modality, n >= 1.
  Returns:
    Centering with ``mean`` [d].
  """
  xf = as_matrix(x, "x")
  return Centering(mean=frozen_array(xf.mean(axis=0)))


@dataclasses.dataclass(frozen=True, eq=False)
class Procrustes:
  """Orthogonal (optionally scaled, optionally centred) map ``x -> y``.

  ``apply(x) = scale * (x - x_mean) @ rotation + y_mean``.

  Attributes:
    rotation: [d, d] float64 orthogonal matrix.
    x_mean: [d] float64 (zeros when fitted with ``center=False``).
    y_mean: [d] float64 (zeros when fitted with ``center=False``).
    scale: float (1.0 when fitted with ``scale=False``).
  """

  rotation: np.ndarray
  x_mean: np.ndarray
  y_mean: np.ndarray
  scale: float

  def apply(self, x: Any) -> np.ndarray:
    """Map x into y's space.

    Args:
      x: [n, d] float32.
    Returns:
      [n, d] mapped rows.
    """
    xf = as_matrix(x, "x")
    check_dim(xf, self.rotation.shape[0], "x", "Procrustes")
    out = self.scale * ((xf - self.x_mean) @ self.rotation) + self.y_mean
    return out.astype(out_dtype(x), copy=False)


def fit_procrustes(x: Any, y: Any, *, center: bool = False, scale: bool = False) -> Procrustes:
  """Orthogonal W minimising ``||s (x - mx) W - (y - my)||_F`` over paired rows.

  ``x`` and ``y`` must have the same dimension: an orthogonal map between
  spaces of different dimension is not defined, and zero-padding would make
  the output dimension differ from y's. For differing dimensions use
  :func:`fit_cca` or :func:`fit_ridge` instead (a ValueError says so).

  Args:
    x: [n, d] float32 source rows.
    y: [n, d] float32 target rows, paired row-for-row with x.
    center: if True, subtract each side's mean before fitting (mx, my);
      otherwise mx = my = 0 (pure rotation/reflection about the origin).
    scale: if True, also fit the isotropic scale s >= 0 minimising the
      residual (``s = sum(singular values) / ||x - mx||_F^2``); else s = 1.
  Returns:
    Procrustes with ``rotation`` [d, d], ``x_mean`` [d], ``y_mean`` [d], ``scale``.
  """
  min_rows = 2 if center else 1
  xf = as_matrix(x, "x", min_rows=min_rows)
  yf = as_matrix(y, "y", min_rows=min_rows)
  check_paired(xf, yf, "x", "y")
  if xf.shape[1] != yf.shape[1]:
    raise ValueError(
      f"Procrustes needs x and y of the same dimension, got d_x={xf.shape[1]} and "
      f"d_y={yf.shape[1]}; use fit_cca or fit_ridge for maps between different dimensions"
    )
  d = xf.shape[1]
  if center:
    x_mean = xf.mean(axis=0)
    y_mean = yf.mean(axis=0)
  else:
    x_mean = np.zeros(d)
    y_mean = np.zeros(d)
  xc = xf - x_mean
  yc = yf - y_mean
  u, s, vt = np.linalg.svd(xc.T @ yc)
  rotation = u @ vt
  if scale:
    denom = float(np.sum(xc * xc))
    if denom <= 0.0:
      raise ValueError("x has zero norm after centring; cannot fit a scale (use scale=False)")
    s_fit = float(np.sum(s)) / denom
  else:
    s_fit = 1.0
  return Procrustes(
    rotation=frozen_array(rotation),
    x_mean=frozen_array(x_mean),
    y_mean=frozen_array(y_mean),
    scale=s_fit,
  )


@dataclasses.dataclass(frozen=True, eq=False)
class Ridge:
  """Multi-output affine map ``x -> x @ coef + intercept``.

  Attributes:
    coef: [d_x, d_y] float64 (note: transposed w.r.t. sklearn's ``coef_``).
    intercept: [d_y] float64.
  """

  coef: np.ndarray
  intercept: np.ndarray

  def apply(self, x: Any) -> np.ndarray:
    """Predict y.

    Args:
      x: [n, d_x] float32.
    Returns:
      [n, d_y] predictions.
    """
    xf = as_matrix(x, "x")
    check_dim(xf, self.coef.shape[0], "x", "Ridge")
    out = xf @ self.coef + self.intercept
    return out.astype(out_dtype(x), copy=False)


def _fit_ridge_core(xf: np.ndarray, yf: np.ndarray, alpha: float) -> Ridge:
  n, d_x = xf.shape
  x_mean = xf.mean(axis=0)
  y_mean = yf.mean(axis=0)
  xc = xf - x_mean
  yc = yf - y_mean
  if alpha > 0.0 and n >= d_x:
    gram = xc.T @ xc
    gram[np.diag_indices(d_x)] += alpha
    coef = np.linalg.solve(gram, xc.T @ yc)
  else:
    # n < d_x (cheaper, [n, n]-sized problem) or alpha == 0 (minimum-norm
    # least squares): closed form through the thin SVD of centred x.
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    if alpha > 0.0:
      shrink = s / (s * s + alpha)
    else:
      keep = s > (s[0] if s.size else 0.0) * max(xc.shape) * np.finfo(np.float64).eps
      shrink = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    coef = (vt.T * shrink) @ (u.T @ yc)
  intercept = y_mean - x_mean @ coef
  return Ridge(coef=frozen_array(coef), intercept=frozen_array(intercept))


def fit_ridge(x: Any, y: Any, alpha: float) -> Ridge:
  """Multi-output ridge regression ``x -> y`` with an (unpenalised) intercept.

  Minimises ``||y - x W - b||_F^2 + alpha ||W||_F^2``, same objective as
  ``sklearn.linear_model.Ridge(alpha, fit_intercept=True)``. Solved on the
  ``[d_x, d_x]`` normal equations when n >= d_x, else through the SVD of the
  centred x. ``alpha=0`` gives the minimum-norm least-squares solution.

  Args:
    x: [n, d_x] float32.
    y: [n, d_y] float32, paired row-for-row with x.
    alpha: ridge penalty, finite and >= 0.
  Returns:
    Ridge with ``coef`` [d_x, d_y] and ``intercept`` [d_y].
  """
  alpha = check_reg(alpha, "alpha")
  xf = as_matrix(x, "x")
  yf = as_matrix(y, "y")
  check_paired(xf, yf, "x", "y")
  return _fit_ridge_core(xf, yf, alpha)


def paired_rows(x_all: Any, y_all: Any, pairs: Any) -> tuple[np.ndarray, np.ndarray]:
  """Gather paired rows of two modalities given by an index array.

  Useful for class-level pairing where row i of x is paired with one or more
  rows of y (a row may appear in several pairs).

  Args:
    x_all: [n_x, d_x] rows of modality x.
    y_all: [n_y, d_y] rows of modality y.
    pairs: [P, 2] int, ``pairs[p] = (row of x_all, row of y_all)``, P >= 1,
      indices in ``[0, n_x)`` and ``[0, n_y)`` (negative indices are rejected).
  Returns:
    (x, y): ``x_all[pairs[:, 0]]`` [P, d_x] and ``y_all[pairs[:, 1]]`` [P, d_y],
    in the dtype of the inputs.
  """
  xa = np.asarray(x_all)
  ya = np.asarray(y_all)
  for arr, name in ((xa, "x_all"), (ya, "y_all")):
    if arr.ndim != 2:
      raise ValueError(f"{name} must be a 2-D array [n, d], got shape {arr.shape}")
    if arr.shape[0] == 0:
      raise ValueError(f"{name} is empty (shape {arr.shape}); nothing to pair")
  p = np.asarray(pairs)
  if p.ndim != 2 or p.shape[1] != 2:
    raise ValueError(f"pairs must have shape [P, 2] (row of x_all, row of y_all), got {p.shape}")
  if p.shape[0] == 0:
    raise ValueError("pairs is empty (shape (0, 2)); need at least one pair")
  if not np.issubdtype(p.dtype, np.integer):
    raise ValueError(f"pairs must be an integer array, got dtype {p.dtype}")
  for col, arr, name in ((0, xa, "x_all"), (1, ya, "y_all")):
    idx = p[:, col]
    bad = (idx < 0) | (idx >= arr.shape[0])
    if bad.any():
      first = int(np.flatnonzero(bad)[0])
      raise ValueError(
        f"pairs[{first}, {col}] = {int(idx[first])} is out of bounds for {name} with "
        f"{arr.shape[0]} rows (valid: 0..{arr.shape[0] - 1}); {int(bad.sum())} bad pair(s)"
      )
  return xa[p[:, 0]], ya[p[:, 1]]


@dataclasses.dataclass(frozen=True, eq=False)
class RidgeBridge:
  """Ridge maps A -> B and C -> B; A-C retrieval compares in B's raw space.

  Attributes:
    a_to_pivot: Ridge [d_a -> d_b].
    c_to_pivot: Ridge [d_c -> d_b].
  """

  a_to_pivot: Ridge
  c_to_pivot: Ridge

  def to_pivot_a(self, a: Any) -> np.ndarray:
    """a: [n, d_a] -> [n, d_b] predicted pivot embeddings."""
    return self.a_to_pivot.apply(a)

  def to_pivot_c(self, c: Any) -> np.ndarray:
    """c: [n, d_c] -> [n, d_b] predicted pivot embeddings."""
    return self.c_to_pivot.apply(c)

  def to_pivot_b(self, b: Any) -> np.ndarray:
    """b: [n, d_b] -> [n, d_b] unchanged (B's raw space is the pivot space)."""
    bf = as_matrix(b, "b")
    check_dim(bf, self.a_to_pivot.coef.shape[1], "b", "RidgeBridge (pivot)")
    return bf.astype(out_dtype(b), copy=False)


def fit_ridge_bridge(
  a_rows: Any, b_rows_for_a: Any, c_rows: Any, b_rows_for_c: Any, alpha: float
) -> RidgeBridge:
  """Linear bridge A -> B <- C from A-B and C-B pairs only.

  Fits ``fit_ridge(a_rows, b_rows_for_a, alpha)`` and
  ``fit_ridge(c_rows, b_rows_for_c, alpha)``. Retrieval A <-> C compares
  ``to_pivot_a(a)`` and ``to_pivot_c(c)`` by cosine in B's space.

  Args:
    a_rows: [n_ab, d_a] float32 A rows paired with ``b_rows_for_a``.
    b_rows_for_a: [n_ab, d_b] float32.
    c_rows: [n_cb, d_c] float32 C rows paired with ``b_rows_for_c``.
    b_rows_for_c: [n_cb, d_b] float32 (same pivot space as ``b_rows_for_a``).
    alpha: ridge penalty (>= 0) used for both maps.
  Returns:
    RidgeBridge.
  """
  alpha = check_reg(alpha, "alpha")
  a, ba, c, bc = validate_bridge_inputs(a_rows, b_rows_for_a, c_rows, b_rows_for_c, 1)
  return RidgeBridge(
    a_to_pivot=_fit_ridge_core(a, ba, alpha), c_to_pivot=_fit_ridge_core(c, bc, alpha)
  )
