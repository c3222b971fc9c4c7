"""Translators as plain arrays, for use outside JAX (NumPy, PyTorch, ...).

  run.export("/tmp/gb_export")                     # translators.npz + translators.json
  from graphbridge.model import export
  exported = export.load("/tmp/gb_export")         # NumPy only: JAX is never imported
  z = exported.apply(x_image, "image->text->audio")  # [rows, 200], as run.translate gives

translators.json holds the format, the nodes {name: dim} and per edge its architecture (d_in,
d_out, hidden widths, activation, layer_norm, residual, linear); translators.npz holds each
edge's parameters under "<edge>/<layer>/<name>" (layers dense_0.., norm_0.., out, skip, linear or
linear_in + linear_out). Each translator is x -> [dense_i -> (LayerNorm) -> activation]* -> out,
plus its linear path where it has one (x @ linear + bias, or (x @ linear_in) @ linear_out + bias),
plus x, or skip(x), where residual. This
module imports only NumPy: docs/api.md shows the same arrays loaded into PyTorch in a few lines.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np

FORMAT = "graphbridge.translators/1"
ARRAYS, SPEC = "translators.npz", "translators.json"
LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = np.asarray(value, np.float32)
  return out


def write(path: str, nodes: Mapping[str, int], edges: Mapping[str, Mapping]) -> list[str]:
  """Write translators.npz and translators.json into the folder `path`.

  nodes: {modality: dim}; edges: {"a->b": {"arch": {hidden, activation, layer_norm, residual},
  "d_in", "d_out", "params": the edge's nested parameter dict (numpy)}}."""
  os.makedirs(path, exist_ok=True)
  arrays, spec = {}, {"format": FORMAT, "nodes": dict(nodes), "edges": {}}
  for name, edge in edges.items():
    arch = dict(edge["arch"])
    spec["edges"][name] = {
      "d_in": int(edge["d_in"]),
      "d_out": int(edge["d_out"]),
      "hidden": [int(h) for h in arch["hidden"]],
      "activation": arch["activation"],
      "layer_norm": bool(arch["layer_norm"]),
      "residual": bool(arch["residual"]),
      "linear": _linear_kind(edge["params"]),
    }
    arrays.update({f"{name}/{k}": v for k, v in _flatten(edge["params"]).items()})
  np.savez(os.path.join(path, ARRAYS), **arrays)
  with open(os.path.join(path, SPEC), "w") as f:
    json.dump(spec, f, indent=1)
  return [os.path.join(path, ARRAYS), os.path.join(path, SPEC)]


def _erf(x: np.ndarray) -> np.ndarray:
  """erf to about 1.2e-7 (Numerical Recipes' erfc Chebyshev fit), NumPy only."""
  z = np.abs(x)
  t = 1.0 / (1.0 + 0.5 * z)
  poly = (
    -z * z
    - 1.26551223
    + t
    * (
      1.00002368
      + t
      * (
        0.37409196
        + t
        * (
          0.09678418
          + t
          * (
            -0.18628806
            + t
            * (
              0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))
            )
          )
        )
      )
    )
  )
  erfc = t * np.exp(poly)
  return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


ACTIVATIONS = {
  "gelu": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
  "gelu_exact": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
  "relu": lambda x: np.maximum(x, 0.0),
  "silu": lambda x: x / (1.0 + np.exp(-x)),
  "tanh": np.tanh,
}


def _linear_kind(params: Mapping) -> str:
  """The edge's linear path as its parameters hold it: "full", "factored" or "none"."""
  return "full" if "linear" in params else "factored" if "linear_in" in params else "none"


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


class Exported:
  """Translators loaded from an export (load); apply(x, path) in NumPy (float64 inside)."""

  def __init__(self, spec: Mapping, arrays: Mapping[str, np.ndarray]):
    if spec.get("format") != FORMAT:
      raise ValueError(
        f"not a graphbridge translators export (format {spec.get('format')!r}, expected {FORMAT!r})"
      )
    self.nodes: dict[str, int] = dict(spec["nodes"])
    self.edges: dict[str, dict] = dict(spec["edges"])
    self.arrays = {k: np.asarray(v, np.float64) for k, v in arrays.items()}

  def _p(self, edge: str, layer: str, name: str) -> np.ndarray:
    return self.arrays[f"{edge}/{layer}/{name}"]

  def apply_edge(self, edge: str, x: np.ndarray) -> np.ndarray:
    """One translator: x [rows, d_in] -> [rows, d_out] (not normalised)."""
    if edge not in self.edges:
      raise KeyError(f"no translator {edge} in this export (edges: {', '.join(self.edges)})")
    spec = self.edges[edge]
    act = ACTIVATIONS[spec["activation"]]
    h = np.asarray(x, np.float64)
    for i in range(len(spec["hidden"])):
      h = h @ self._p(edge, f"dense_{i}", "kernel") + self._p(edge, f"dense_{i}", "bias")
      if spec["layer_norm"]:
        mean = h.mean(axis=-1, keepdims=True)
        var = np.maximum((h * h).mean(axis=-1, keepdims=True) - mean * mean, 0.0)
        h = (h - mean) / np.sqrt(var + LAYER_NORM_EPS) * self._p(
          edge, f"norm_{i}", "scale"
        ) + self._p(edge, f"norm_{i}", "bias")
      h = act(h)
    out = h @ self._p(edge, "out", "kernel") + self._p(edge, "out", "bias")
    x64 = np.asarray(x, np.float64)
    linear = spec.get("linear", "none")  # exports without the field have no linear path
    if linear == "full":
      out = out + x64 @ self._p(edge, "linear", "kernel") + self._p(edge, "linear", "bias")
    elif linear == "factored":
      low = x64 @ self._p(edge, "linear_in", "kernel")
      out = out + low @ self._p(edge, "linear_out", "kernel") + self._p(edge, "linear_out", "bias")
    if spec["residual"]:
      out = out + (x64 if spec["d_in"] == spec["d_out"] else x64 @ self._p(edge, "skip", "kernel"))
    return out

  def apply(self, x: np.ndarray, path: str, normalize: bool = True) -> np.ndarray:
    """x [rows, d_src] -> [rows, d_dst] float32 along `path` ('image->text->audio'): input rows
    L2-normalised (as training data), each translator in turn, the output L2-normalised, as
    graphbridge's Run.translate. normalize=False: raw inputs and outputs."""
    nodes = [n.strip() for n in path.split("->")]
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != self.nodes.get(nodes[0]):
      raise ValueError(
        f"apply({path!r}): expected [rows, {self.nodes.get(nodes[0])}] rows, got shape {x.shape}"
      )
    h = _unit(x) if normalize else x
    for a, b in zip(nodes, nodes[1:]):
      h = self.apply_edge(f"{a}->{b}", h)
    return (_unit(h) if normalize else h).astype(np.float32)


def load(path: str) -> Exported:
  """The export in folder `path` (translators.json + translators.npz)."""
  with open(os.path.join(path, SPEC)) as f:
    spec = json.load(f)
  with np.load(os.path.join(path, ARRAYS)) as arrays:
    return Exported(spec, dict(arrays))
