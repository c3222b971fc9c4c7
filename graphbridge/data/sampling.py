"""Arrays a device sampler draws batches from, and the jitted samplers themselves."""

from __future__ import annotations

from typing import Mapping, Sequence
import numpy as np
from graphbridge.core.graph import Edge, ModalityGraph
from graphbridge.core.errors import DataError
from graphbridge.data.dataset import Dataset, train_rows


def device_arrays(
  dataset: Dataset, graph: ModalityGraph, pair_sets: Sequence[Edge], starts: Sequence[str]
) -> dict:
  """The arrays a device-resident sampler needs, as a pytree of numpy arrays.

  {"emb": {m: [N_m, d]}, "rows": {m: [n_train_m] int32}, "pairs": {"a->b": [P, 2] int32},
   "pair_labels": {"a->b": [P] int32}}"""
  needed = set(starts) | {e.src for e in pair_sets} | {e.dst for e in pair_sets}
  out = {"emb": {}, "rows": {}, "pairs": {}, "pair_labels": {}}
  rows = train_rows(dataset)
  for m in graph.node_names:
    if m in needed:
      out["emb"][m] = dataset.modalities[m].emb
  for m in starts:
    out["rows"][m] = rows[m]
  for edge in pair_sets:
    pairs = dataset.pairs_for(edge.src, edge.dst)
    if len(pairs) == 0:
      raise DataError(
        f"{edge.src}<->{edge.dst}: a pair loss needs train pairs but there are none (pair sets: "
        f"{', '.join(dataset.pair_names) or 'none'})"
      )
    out["pairs"][edge.name] = pairs.astype(np.int32)
    labels = dataset.modalities[edge.src].labels
    out["pair_labels"][edge.name] = (
      labels[pairs[:, 0]] if labels is not None else np.arange(len(pairs))
    ).astype(np.int32)
  return out


def sample_batch(arrays: dict, key, batch_size: int) -> dict:
  """Draw one batch on device (jit-friendly; shapes depend only on batch_size).

  Returns {"start": {m: [B, d_m]}, "src": {edge: [B, d_src]}, "dst": {edge: [B, d_dst]},
           "pair_label": {edge: [B] int32}}."""
  import jax  # local: data.py stays importable without touching devices
  import jax.numpy as jnp

  batch = {"start": {}, "src": {}, "dst": {}, "pair_label": {}}
  names = sorted(arrays["rows"]) + sorted(arrays["pairs"])
  keys = dict(zip(names, jax.random.split(key, max(len(names), 1))))
  for m, rows in arrays["rows"].items():
    pick = jax.random.randint(keys[m], (batch_size,), 0, rows.shape[0])
    batch["start"][m] = jnp.take(arrays["emb"][m], rows[pick], axis=0)
  for name, pairs in arrays["pairs"].items():
    src, dst = name.split("->")
    index = jax.random.randint(keys[name], (batch_size,), 0, pairs.shape[0])
    pick = jnp.take(pairs, index, axis=0)
    batch["src"][name] = jnp.take(arrays["emb"][src], pick[:, 0], axis=0)
    batch["dst"][name] = jnp.take(arrays["emb"][dst], pick[:, 1], axis=0)
    batch["pair_label"][name] = jnp.take(arrays["pair_labels"][name], index)
  return batch


def aligned_arrays(
  dataset: Dataset,
  modalities: Sequence[str],
  pair_keys: Sequence[str],
  infonce_positives: str | Mapping[str, str] = "label",
) -> dict:
  """Arrays for instance-aligned sampling: row i of every modality is the same sample.

  {"emb": {m: [N, d_m]}, "rows": [n_train] int32 (train in every modality), "labels": [N] int32}"""
  sizes = {m: len(dataset.modalities[m]) for m in modalities}
  if len(set(sizes.values())) != 1:
    raise DataError(
      f"aligned batches need instance-aligned modalities (row i of every modality is the same "
      f"sample), but row counts differ: {sizes}"
    )
  n = next(iter(sizes.values()))
  for key in pair_keys:
    a, b = key.split("->")
    pairs = dataset.pairs_for(a, b, split="all")
    if not (len(pairs) and np.array_equal(pairs[:, 0], pairs[:, 1])):
      raise DataError(
        f"aligned batches: pairs_{a}__{b} must pair row i with row i (instance-aligned data)"
      )
  train = np.ones(n, bool)
  for m in modalities:
    train &= dataset.modalities[m].train
  if not train.any():
    raise DataError("aligned batches: no row is a train row in every modality")
  labels = next(
    (dataset.modalities[m].labels for m in modalities if dataset.modalities[m].labels is not None),
    None,
  )
  if isinstance(infonce_positives, Mapping):  # per pair set: label positives only if all agree
    infonce_positives = (
      "label"
      if infonce_positives and all(v == "label" for v in infonce_positives.values())
      else "pair"
    )
  if labels is None or infonce_positives == "pair":
    labels = np.arange(n)
  return {
    "emb": {m: dataset.modalities[m].emb for m in modalities},
    "rows": np.nonzero(train)[0].astype(np.int32),
    "labels": labels.astype(np.int32),
  }


def sample_aligned_batch(arrays: dict, key, batch_size: int, pair_keys: Sequence[str]) -> dict:
  """One instance-aligned batch: the same rows of every modality. Jit-friendly."""
  import jax
  import jax.numpy as jnp

  pick = arrays["rows"][jax.random.randint(key, (batch_size,), 0, arrays["rows"].shape[0])]
  labels = jnp.take(arrays["labels"], pick)
  return {
    "start": {m: jnp.take(e, pick, axis=0) for m, e in arrays["emb"].items()},
    "pair_label": {k: labels for k in pair_keys},
  }
