"""Input checks and numerically careful helpers of the linear maps."""

from __future__ import annotations

from typing import Any
import numpy as np


# Relative eigenvalue floor below which a (regularised) covariance is treated as
# singular and whitening refuses to proceed.
SINGULAR_RTOL = 1e-12


def as_matrix(x: Any, name: str, *, min_rows: int = 1, check_finite: bool = True) -> np.ndarray:
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


def check_paired(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
  if x.shape[0] != y.shape[0]:
    raise ValueError(
      f"{x_name} and {y_name} must be paired row-for-row, but {x_name} has "
      f"{x.shape[0]} rows and {y_name} has {y.shape[0]}"
    )


def check_dim(x: np.ndarray, expected: int, name: str, what: str) -> None:
  if x.shape[1] != expected:
    raise ValueError(
      f"{name} has {x.shape[1]} columns but this {what} was fitted on {expected}-dim input"
    )


def out_dtype(x: Any) -> np.dtype:
  dtype = np.asarray(x).dtype
  return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def frozen_array(arr: np.ndarray) -> np.ndarray:
  out = np.array(arr, dtype=np.float64, copy=True)
  out.setflags(write=False)
  return out


def check_reg(reg: float, name: str = "reg") -> float:
  reg = float(reg)
  if not np.isfinite(reg) or reg < 0:
    raise ValueError(f"{name} must be a finite number >= 0, got {reg}")
  return reg


def regularised_cov(xc: np.ndarray, reg: float, name: str) -> np.ndarray:
  """Covariance of centred ``xc`` ``[n, d]`` (ddof=1) plus ``reg * mean_variance * I``."""
  n, d = xc.shape
  cov = xc.T @ xc / (n - 1)
  mean_var = float(np.trace(cov)) / d
  if mean_var <= 0.0:
    raise ValueError(f"{name} has zero variance (all rows identical); cannot whiten it")
  cov[np.diag_indices(d)] += reg * mean_var
  return cov


def inv_sqrt_psd(cov: np.ndarray, name: str, reg: float) -> np.ndarray:
  """Symmetric inverse square root of a symmetric positive-definite ``[d, d]`` matrix."""
  evals, evecs = np.linalg.eigh(cov)
  if evals[0] <= SINGULAR_RTOL * max(evals[-1], 0.0) or evals[-1] <= 0.0:
    raise ValueError(
      f"covariance of {name} is singular (d={cov.shape[0]}, too few rows or collinear "
      f"columns) with reg={reg}; increase reg (e.g. 1e-3)"
    )
  return (evecs * (1.0 / np.sqrt(evals))) @ evecs.T


def validate_bridge_inputs(
  a_rows: Any, b_rows_for_a: Any, c_rows: Any, b_rows_for_c: Any, min_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  a = as_matrix(a_rows, "a_rows", min_rows=min_rows)
  ba = as_matrix(b_rows_for_a, "b_rows_for_a", min_rows=min_rows)
  c = as_matrix(c_rows, "c_rows", min_rows=min_rows)
  bc = as_matrix(b_rows_for_c, "b_rows_for_c", min_rows=min_rows)
  check_paired(a, ba, "a_rows", "b_rows_for_a")
  check_paired(c, bc, "c_rows", "b_rows_for_c")
  if ba.shape[1] != bc.shape[1]:
    raise ValueError(
      "b_rows_for_a and b_rows_for_c must live in the same pivot space, but have "
      f"{ba.shape[1]} and {bc.shape[1]} columns"
    )
  return a, ba, c, bc
