"""The loss functions of a step, written once for every strategy: cosine reconstruction, symmetric
InfoNCE (with several positives per row), the neighbourhood-structure regulariser, and the
row gather whose gradient is deterministic (objectives.py composes them along a LossPlan; C-MCR
uses the first two on its projected spaces)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from graphbridge.model.translators import normalize


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gather_rows(pool: jax.Array, index: tuple[int, ...]) -> jax.Array:
  """pool[index] for a static index; pool: [S, ...] -> [len(index), ...].

  The gradient w.r.t. pool sums the rows of the incoming gradient that came from each pool row,
  as a few static gathers (one per use of the most-used row) plus adds: deterministic (no
  atomics) and NaN-contained (a NaN row reaches only the pool row it came from)."""
  return _gather_rows_fwd(pool, index)[0]


def _gather_rows_fwd(pool, index):
  if index == tuple(range(pool.shape[0])):
    return pool, pool.shape[0]
  start = index[0]
  if index == tuple(range(start, start + len(index))):
    return jax.lax.slice_in_dim(pool, start, start + len(index)), pool.shape[0]
  return jnp.take(pool, np.asarray(index, np.int32), axis=0), pool.shape[0]


def _gather_rows_bwd(index, n_pool, g):
  if index == tuple(range(n_pool)):
    return (g,)
  uses: list[list[int]] = [[] for _ in range(n_pool)]
  for j, row in enumerate(index):
    uses[row].append(j)
  zero_row = len(index)  # index of an appended zero row, for pool rows with fewer uses
  g_padded = jnp.concatenate([g, jnp.zeros((1,) + g.shape[1:], g.dtype)])
  grad = None
  for k in range(max(len(u) for u in uses)):
    pick = np.asarray([u[k] if k < len(u) else zero_row for u in uses], np.int32)
    part = jnp.take(g_padded, pick, axis=0)
    grad = part if grad is None else grad + part
  return (grad,)


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


def cosine_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """pred, target: [..., B, d] -> [...] mean over B of 1 - cos."""
  return 1.0 - jnp.mean(jnp.sum(normalize(pred) * normalize(target), axis=-1), axis=-1)


def symmetric_infonce(
  pred: jax.Array,
  target: jax.Array,
  labels: jax.Array,
  inv_temperature: jax.Array,
  dtype=jnp.float32,
) -> jax.Array:
  """pred, target: [E, B, d]; labels: [E, B] (rows with equal labels are positives).

  KL divergence from the uniform distribution over positives to the softmax, both directions: the
  usual CLIP loss when every label in the batch is distinct, and 0 at the optimum when several
  rows share a label (cross-entropy minus the targets' entropy; same gradients). The logit
  matmul runs in `dtype` with float32 accumulation. Returns [E]."""
  logits = (
    jnp.einsum(
      "ebd,ecd->ebc",
      normalize(pred).astype(dtype),
      normalize(target).astype(dtype),
      preferred_element_type=jnp.float32,
    )
    * inv_temperature
  )
  positives = (labels[:, :, None] == labels[:, None, :]).astype(jnp.float32)
  n_pos = jnp.sum(positives, axis=-1)  # symmetric, so also the column counts
  targets = positives / n_pos[..., None]
  row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1) - jnp.log(n_pos)
  col = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1) - jnp.log(n_pos)
  return 0.5 * (jnp.mean(row, axis=-1) + jnp.mean(col, axis=-1))


def structure_loss(x: jax.Array, y: jax.Array, temperature: float) -> jax.Array:
  """Neighbourhood-structure regulariser (after STRUCTURE, NeurIPS 2025): x [..., B, d_a] rows of a
  modality, y [..., B, d_b] their translations. Each row's softmax over its cosine similarities
  to the other rows of the batch (temperature-sharpened: the near neighbours dominate) should be
  the same before and after translation: mean over rows of KL(p_x || p_y). 0 when the translation
  keeps every similarity (e.g. a rotation). Returns [...]."""

  def log_p(z):
    z = normalize(z)
    sims = jnp.einsum("...bd,...cd->...bc", z, z) / temperature
    eye = jnp.eye(sims.shape[-1], dtype=bool)
    return jax.nn.log_softmax(jnp.where(eye, -1e9, sims), axis=-1)

  lx, ly = log_p(x.astype(jnp.float32)), log_p(y.astype(jnp.float32))
  kl = jnp.sum(jnp.exp(lx) * (lx - ly), axis=-1)
  return jnp.mean(kl, axis=-1)
