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

__all__ = [
    "Centering",
    "Procrustes",
    "CCA",
    "Ridge",
    "RidgeBridge",
    "CCABridge",
    "fit_centering",
    "fit_procrustes",
    "fit_cca",
    "fit_ridge",
    "paired_rows",
    "fit_ridge_bridge",
    "fit_cca_bridge",
]

# Relative eigenvalue floor below which a (regularised) covariance is treated as
# singular and whitening refuses to proceed.
_SINGULAR_RTOL = 1e-12


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #


def _as_matrix(x: Any, name: str, *, min_rows: int = 1, check_finite: bool = True) -> np.ndarray:
    """Validate ``x`` as a 2-D numeric array and return it as float64 ``[n, d]``."""
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = " (for a single vector use v[None, :])" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {arr.shape}{hint}")
    n, d = arr.shape
    if n == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); it needs at least {min_rows} row(s)")
    if d == 0:
        raise ValueError(f"{name} has no columns (shape {arr.shape}); embeddings need d >= 1")
    if n < min_rows:
        raise ValueError(f"{name} has {n} row(s) but at least {min_rows} are needed")
    out = arr.astype(np.float64, copy=False)
    if check_finite:
        finite_rows = np.isfinite(out).all(axis=1)
        if not finite_rows.all():
            bad = int(np.flatnonzero(~finite_rows)[0])
            n_bad = int((~finite_rows).sum())
            raise ValueError(
                f"{name} contains NaN/inf values in {n_bad} row(s); first bad row index is {bad}"
            )
    return out


def _check_paired(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x_name} and {y_name} must be paired row-for-row, but {x_name} has "
            f"{x.shape[0]} rows and {y_name} has {y.shape[0]}"
        )


def _check_dim(x: np.ndarray, expected: int, name: str, what: str) -> None:
    if x.shape[1] != expected:
        raise ValueError(
            f"{name} has {x.shape[1]} columns but this {what} was fitted on {expected}-dim input"
        )


def _out_dtype(x: Any) -> np.dtype:
    dtype = np.asarray(x).dtype
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _frozen(arr: np.ndarray) -> np.ndarray:
    out = np.array(arr, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


def _check_reg(reg: float, name: str = "reg") -> float:
    reg = float(reg)
    if not np.isfinite(reg) or reg < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {reg}")
    return reg


def _regularised_cov(xc: np.ndarray, reg: float, name: str) -> np.ndarray:
    """Covariance of centred ``xc`` ``[n, d]`` (ddof=1) plus ``reg * mean_variance * I``."""
    n, d = xc.shape
    cov = xc.T @ xc / (n - 1)
    mean_var = float(np.trace(cov)) / d
    if mean_var <= 0.0:
        raise ValueError(f"{name} has zero variance (all rows identical); cannot whiten it")
    cov[np.diag_indices(d)] += reg * mean_var
    return cov


def _inv_sqrt_psd(cov: np.ndarray, name: str, reg: float) -> np.ndarray:
    """Symmetric inverse square root of a symmetric positive-definite ``[d, d]`` matrix."""
    evals, evecs = np.linalg.eigh(cov)
    if evals[0] <= _SINGULAR_RTOL * max(evals[-1], 0.0) or evals[-1] <= 0.0:
        raise ValueError(
            f"covariance of {name} is singular (d={cov.shape[0]}, too few rows or collinear "
            f"columns) with reg={reg}; increase reg (e.g. 1e-3)"
        )
    return (evecs * (1.0 / np.sqrt(evals))) @ evecs.T


# --------------------------------------------------------------------------- #
# Centering
# --------------------------------------------------------------------------- #


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
        xf = _as_matrix(x, "x")
        _check_dim(xf, self.mean.shape[0], "x", "Centering")
        xc = xf - self.mean
        norms = np.linalg.norm(xc, axis=1, keepdims=True)
        out = np.divide(xc, norms, out=np.zeros_like(xc), where=norms > 0)
        return out.astype(_out_dtype(x), copy=False)


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
    xf = _as_matrix(x, "x")
    return Centering(mean=_frozen(xf.mean(axis=0)))


# --------------------------------------------------------------------------- #
# Orthogonal Procrustes
# --------------------------------------------------------------------------- #


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
        xf = _as_matrix(x, "x")
        _check_dim(xf, self.rotation.shape[0], "x", "Procrustes")
        out = self.scale * ((xf - self.x_mean) @ self.rotation) + self.y_mean
        return out.astype(_out_dtype(x), copy=False)


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
    xf = _as_matrix(x, "x", min_rows=min_rows)
    yf = _as_matrix(y, "y", min_rows=min_rows)
    _check_paired(xf, yf, "x", "y")
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
        rotation=_frozen(rotation), x_mean=_frozen(x_mean), y_mean=_frozen(y_mean), scale=s_fit
    )


# --------------------------------------------------------------------------- #
# CCA
# --------------------------------------------------------------------------- #


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
        xf = _as_matrix(x, "x")
        _check_dim(xf, self.wx.shape[0], "x", "CCA (x side)")
        out = (xf - self.x_mean) @ self.wx
        if scale_by_sqrt_corr:
            out = out * np.sqrt(self.correlations)
        return out.astype(_out_dtype(x), copy=False)

    def apply_y(self, y: Any, *, scale_by_sqrt_corr: bool = False) -> np.ndarray:
        """Project y into the shared canonical space.

        Args:
          y: [n, d_y] float32.
          scale_by_sqrt_corr: see :meth:`apply_x`.
        Returns:
          [n, k] canonical variates.
        """
        yf = _as_matrix(y, "y")
        _check_dim(yf, self.wy.shape[0], "y", "CCA (y side)")
        out = (yf - self.y_mean) @ self.wy
        if scale_by_sqrt_corr:
            out = out * np.sqrt(self.correlations)
        return out.astype(_out_dtype(y), copy=False)


def _check_n_components(n_components: Any, n: int, d_x: int, d_y: int, x_name: str, y_name: str) -> int:
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
    cov_xx = _regularised_cov(xc, reg, x_name)
    cov_yy = _regularised_cov(yc, reg, y_name)
    cov_xy = xc.T @ yc / (n - 1)
    whiten_x = _inv_sqrt_psd(cov_xx, x_name, reg)
    whiten_y = _inv_sqrt_psd(cov_yy, y_name, reg)
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
        x_mean=_frozen(x_mean),
        y_mean=_frozen(y_mean),
        wx=_frozen(wx),
        wy=_frozen(wy),
        correlations=_frozen(correlations),
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
    reg = _check_reg(reg)
    xf = _as_matrix(x, "x", min_rows=2)
    yf = _as_matrix(y, "y", min_rows=2)
    _check_paired(xf, yf, "x", "y")
    k = _check_n_components(n_components, xf.shape[0], xf.shape[1], yf.shape[1], "x", "y")
    cca, _ = _fit_cca_core(xf, yf, k, reg, "x", "y")
    return cca


# --------------------------------------------------------------------------- #
# Ridge regression
# --------------------------------------------------------------------------- #


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
        xf = _as_matrix(x, "x")
        _check_dim(xf, self.coef.shape[0], "x", "Ridge")
        out = xf @ self.coef + self.intercept
        return out.astype(_out_dtype(x), copy=False)


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
    return Ridge(coef=_frozen(coef), intercept=_frozen(intercept))


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
    alpha = _check_reg(alpha, "alpha")
    xf = _as_matrix(x, "x")
    yf = _as_matrix(y, "y")
    _check_paired(xf, yf, "x", "y")
    return _fit_ridge_core(xf, yf, alpha)


# --------------------------------------------------------------------------- #
# Index-based pairing
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Pivot bridges A -> B <- C
# --------------------------------------------------------------------------- #


def _validate_bridge_inputs(
    a_rows: Any, b_rows_for_a: Any, c_rows: Any, b_rows_for_c: Any, min_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a = _as_matrix(a_rows, "a_rows", min_rows=min_rows)
    ba = _as_matrix(b_rows_for_a, "b_rows_for_a", min_rows=min_rows)
    c = _as_matrix(c_rows, "c_rows", min_rows=min_rows)
    bc = _as_matrix(b_rows_for_c, "b_rows_for_c", min_rows=min_rows)
    _check_paired(a, ba, "a_rows", "b_rows_for_a")
    _check_paired(c, bc, "c_rows", "b_rows_for_c")
    if ba.shape[1] != bc.shape[1]:
        raise ValueError(
            "b_rows_for_a and b_rows_for_c must live in the same pivot space, but have "
            f"{ba.shape[1]} and {bc.shape[1]} columns"
        )
    return a, ba, c, bc


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
        bf = _as_matrix(b, "b")
        _check_dim(bf, self.a_to_pivot.coef.shape[1], "b", "RidgeBridge (pivot)")
        return bf.astype(_out_dtype(b), copy=False)


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
    alpha = _check_reg(alpha, "alpha")
    a, ba, c, bc = _validate_bridge_inputs(a_rows, b_rows_for_a, c_rows, b_rows_for_c, 1)
    return RidgeBridge(a_to_pivot=_fit_ridge_core(a, ba, alpha), c_to_pivot=_fit_ridge_core(c, bc, alpha))


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
        af = _as_matrix(a, "a")
        _check_dim(af, self.a_weight.shape[0], "a", "CCABridge (A side)")
        return (af @ self.a_weight + self.a_offset).astype(_out_dtype(a), copy=False)

    def to_pivot_c(self, c: Any) -> np.ndarray:
        """c: [n, d_c] -> [n, d_b] predicted whitened pivot coordinates."""
        cf = _as_matrix(c, "c")
        _check_dim(cf, self.c_weight.shape[0], "c", "CCABridge (C side)")
        return (cf @ self.c_weight + self.c_offset).astype(_out_dtype(c), copy=False)

    def to_pivot_b(self, b: Any) -> np.ndarray:
        """b: [n, d_b] raw pivot rows -> [n, d_b] whitened pivot coordinates.

        Caveat: whitening gives B's low-variance (often noise) directions unit
        variance, while ``to_pivot_a`` / ``to_pivot_c`` predictions lie in the
        span of the top canonical directions only, so A->B retrieval in this
        space is weaker than A<->C retrieval (for A->B use :func:`fit_cca` or
        :func:`fit_ridge` directly).
        """
        bf = _as_matrix(b, "b")
        _check_dim(bf, self.pivot_mean.shape[0], "b", "CCABridge (pivot)")
        return ((bf - self.pivot_mean) @ self.pivot_whitening).astype(_out_dtype(b), copy=False)


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
    reg = _check_reg(reg)
    a, ba, c, bc = _validate_bridge_inputs(a_rows, b_rows_for_a, c_rows, b_rows_for_c, 2)
    _check_n_components(n_components, a.shape[0], a.shape[1], ba.shape[1], "a", "b")
    k = _check_n_components(n_components, c.shape[0], c.shape[1], bc.shape[1], "c", "b")

    pooled = np.concatenate([ba, bc], axis=0)
    pivot_mean = pooled.mean(axis=0)
    cov_pooled = _regularised_cov(pooled - pivot_mean, reg, "pivot rows (b_rows_for_a + b_rows_for_c)")
    pivot_whitening = _inv_sqrt_psd(cov_pooled, "pivot rows (b_rows_for_a + b_rows_for_c)", reg)

    a_weight, a_offset, a_cca = _cca_regression_map(a, (ba - pivot_mean) @ pivot_whitening, k, reg, "a_rows")
    c_weight, c_offset, c_cca = _cca_regression_map(c, (bc - pivot_mean) @ pivot_whitening, k, reg, "c_rows")
    return CCABridge(
        pivot_mean=_frozen(pivot_mean),
        pivot_whitening=_frozen(pivot_whitening),
        a_weight=_frozen(a_weight),
        a_offset=_frozen(a_offset),
        c_weight=_frozen(c_weight),
        c_offset=_frozen(c_offset),
        a_cca=a_cca,
        c_cca=c_cca,
    )
