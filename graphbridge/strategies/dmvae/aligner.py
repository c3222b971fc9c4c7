"""Evaluation's view of a DMVAE: the shared latent and translation routes."""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence
import jax
import jax.numpy as jnp
import numpy as np

from graphbridge.core.rows import unit_rows
from graphbridge.core.errors import GraphError
from graphbridge.strategies.dmvae.model import (
  DMVAEError,
  DMVAESpec,
  SHARED,
  decode,
  encode,
  product_of_experts,
)


CHUNK = 1024  # rows per jitted call; inputs padded to it so a new row count never recompiles


@functools.cache
def _jitted(spec: DMVAESpec, what: str, query: str, gallery: str):
  if what == "shared":

    def fn(params, x):
      (_, _), (mu, logvar) = encode(spec, params, query, x)
      return product_of_experts(mu[None], logvar[None], jnp.ones((1, x.shape[0])))[0]
  else:

    def fn(params, x):
      (_, _), (mu, logvar) = encode(spec, params, query, x)
      z_shared = product_of_experts(mu[None], logvar[None], jnp.ones((1, x.shape[0])))[0]
      return decode(spec, params, gallery, jnp.zeros((x.shape[0], spec.private_dim)), z_shared)

  return jax.jit(fn)


def _run_chunked(fn, params, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  parts = []
  for lo in range(0, max(len(x), 1), CHUNK):
    block = x[lo : lo + CHUNK]
    padded = np.zeros((CHUNK, x.shape[1]), np.float32)
    padded[: len(block)] = block
    parts.append(np.asarray(fn(params, jnp.asarray(padded)), np.float32)[: len(block)])
  return np.concatenate(parts)


def _normalize(z: np.ndarray) -> np.ndarray:
  return unit_rows(z, floor=1e-8, dtype=np.float32)


@dataclasses.dataclass
class DMVAEAligner:
  """Evaluation's view of a DMVAE (evaluate.Aligner).

  Routes: `a->shared<-b` compares the shared posterior means of both sides (cosine);
  `a->shared->b` decodes a's shared posterior mean as b (private latent = its prior mean, 0) and
  compares it with b's embeddings. `mode` picks the default route ("shared" or "translate")."""

  spec: DMVAESpec
  params: Mapping
  name: str = "dmvae"
  mode: str = "shared"

  def __post_init__(self):
    if self.mode not in ("shared", "translate"):
      raise DMVAEError(f"DMVAEAligner mode {self.mode!r}: choose 'shared' or 'translate'")

  def default_route(self, query: str, gallery: str) -> str | None:
    if query not in self.spec.names or gallery not in self.spec.names:
      return None
    return (
      f"{query}->{SHARED}<-{gallery}" if self.mode == "shared" else f"{query}->{SHARED}->{gallery}"
    )

  def translation_routes(self, modalities: Sequence[str]) -> tuple[str, ...]:
    return tuple(
      f"{q}->{SHARED}->{g}"
      for q in modalities
      for g in modalities
      if q != g and q in self.spec.names and g in self.spec.names
    )

  def route_ends(self, route: str) -> tuple[str, str]:
    return self._parse(route)[1:]

  def _parse(self, route: str) -> tuple[str, str, str]:
    text = route.replace(" ", "")
    for sep, kind in ((f"->{SHARED}<-", "shared"), (f"->{SHARED}->", "translate")):
      if sep in text:
        query, gallery = text.split(sep)
        for m in (query, gallery):
          self.spec.dim(m)
        return kind, query, gallery
    raise GraphError(
      f"dmvae route {route!r}: expected 'a->{SHARED}<-b' (compare in the shared latent) or "
      f"'a->{SHARED}->b' (translate a into b)"
    )

  def shared_mean(self, modality: str, x: np.ndarray) -> np.ndarray:
    """x: [n, d_m] -> [n, shared_dim] posterior means of q(z_s | x) (with the prior expert)."""
    return _run_chunked(_jitted(self.spec, "shared", modality, modality), self.params, x)

  def translate(self, query: str, gallery: str, x: np.ndarray) -> np.ndarray:
    """x: [n, d_query] -> [n, d_gallery], L2-normalised."""
    return _run_chunked(_jitted(self.spec, "translate", query, gallery), self.params, x)

  def apply_route(self, route: str, x: np.ndarray) -> np.ndarray:
    """One side of a route on rows x: 'a->shared' (a's shared posterior means, unit rows) or
    'a->shared->b' (a translated into b's space)."""
    text = route.replace(" ", "")
    if text.endswith(f"->{SHARED}") and text.count("->") == 1:
      modality = text.split("->")[0]
      self.spec.dim(modality)
      return _normalize(self.shared_mean(modality, x))
    kind, q, g = self._parse(route)
    if kind != "translate":
      raise GraphError(f"dmvae route {route!r}: translate along 'a->{SHARED}' or 'a->{SHARED}->b'")
    return self.translate(q, g, x)

  def encode(self, query, gallery, route, xq, xg):
    kind, q, g = self._parse(route)
    if (q, g) != (query, gallery):
      raise GraphError(f"route {route} does not join {query} (query) and {gallery} (gallery)")
    if kind == "shared":
      return _normalize(self.shared_mean(q, xq)), _normalize(self.shared_mean(g, xg))
    return self.translate(q, g, xq), _normalize(np.asarray(xg, np.float32))
