"""Building a data set from your own embeddings: pairs from ids, splits, saving, split checks.

ids_img, ids_txt = ...                                    # e.g. COCO image ids of each row
pairs = pairs_from_ids(ids_img, ids_txt)                  # [P, 2] rows joined by equal id
split = make_splits(len(ids_img), {"train": 0.8, "test": 0.2}, seed=0, groups=ids_img)
ds = data.from_arrays({"image_emb": x_img, "image_train": split["train"], "image_test":
split["test"],
                       "text_emb": x_txt, ..., "pairs_image__text": pairs})
ds.save("mine.npz")                                       # then --config.data.path=mine.npz
"""

from __future__ import annotations

import os
import zlib
from typing import Mapping, Sequence
import numpy as np


def pairs_from_ids(ids_a, ids_b) -> np.ndarray:
  """[P, 2] int64 (row of a, row of b) for every pair of rows with equal ids, sorted by a's row.

  ids_a: [N_a], ids_b: [N_b] (ints or strings). Ids repeated on both sides give every combination
  (class ids give class-level pairs). Raises ValueError when no id is shared."""
  a, b = np.asarray(ids_a), np.asarray(ids_b)
  if a.ndim != 1 or b.ndim != 1:
    raise ValueError(f"pairs_from_ids: ids must be 1-D, got shapes {a.shape} and {b.shape}")
  order = np.argsort(b, kind="stable")
  sorted_b = b[order]
  lo = np.searchsorted(sorted_b, a, side="left")
  hi = np.searchsorted(sorted_b, a, side="right")
  counts = hi - lo
  if not counts.any():
    raise ValueError(f"pairs_from_ids: no id of a ({len(a)} rows) occurs in b ({len(b)} rows)")
  rows_a = np.repeat(np.arange(len(a)), counts)
  starts = np.repeat(lo, counts)
  offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  rows_b = order[starts + offsets]
  return np.stack([rows_a, rows_b], axis=1).astype(np.int64)


def _unit_hash(seed: int, value) -> float:
  """A value in [0, 1) fixed by (seed, value): the same group lands in the same split in every
  modality, whichever other groups a modality has."""
  return zlib.crc32(f"{int(seed)}:{value}".encode()) / 2.0**32


def make_splits(
  n: int, fractions: Mapping[str, float] | Sequence[float], seed: int = 0, groups=None
) -> dict[str, np.ndarray]:
  """Disjoint boolean masks [n] covering every row, e.g. {"train": 0.8, "test": 0.2}.

  fractions: {name: fraction} (or a sequence, named train, test, then split2, ...), summing to 1.
  groups: [n] ids keeping rows together (an instance shown in several modalities, a speaker):
    every row of a group gets the same split, chosen by a hash of (seed, group id), so calling
    make_splits for each modality with its ids splits them consistently; fractions then hold
    over groups, approximately. Without groups the row counts are exact (a seeded permutation)."""
  if isinstance(fractions, Mapping):
    names, values = list(fractions), [float(v) for v in fractions.values()]
  else:
    values = [float(v) for v in fractions]
    names = ["train", "test"][: len(values)] + [f"split{i}" for i in range(2, len(values))]
  if not values or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
    raise ValueError(
      f"make_splits: fractions must be >= 0 and sum to 1, got {dict(zip(names, values))}"
    )
  n = int(n)
  bounds = np.cumsum(values)
  bounds[-1] = 1.0
  if groups is None:
    position = np.empty(n)
    position[np.random.default_rng(seed).permutation(n)] = (np.arange(n) + 0.5) / max(n, 1)
  else:
    groups = np.asarray(groups)
    if groups.shape != (n,):
      raise ValueError(f"make_splits: groups must have shape ({n},), got {groups.shape}")
    unique, inverse = np.unique(groups, return_inverse=True)
    position = np.array([_unit_hash(seed, g) for g in unique.tolist()])[inverse]
  which = np.searchsorted(bounds, position, side="right").clip(max=len(values) - 1)
  return {name: which == i for i, name in enumerate(names)}


def to_arrays(dataset) -> dict[str, np.ndarray]:
  """The data set in the on-disk format (docs/data.md): {m_emb, m_label, m_id, m_train,
  m_test, pairs_a__b, class_names}. Embeddings as held (L2-normalised)."""
  arrays: dict[str, np.ndarray] = {}
  for name, mod in dataset.modalities.items():
    arrays[f"{name}_emb"] = np.asarray(mod.emb, np.float32)
    if mod.labels is not None:
      arrays[f"{name}_label"] = np.asarray(mod.labels)
    if mod.ids is not None:
      arrays[f"{name}_id"] = np.asarray(mod.ids)
    arrays[f"{name}_train"] = np.asarray(mod.train, bool)
    arrays[f"{name}_test"] = np.asarray(mod.test, bool)
  for (a, b), pairs in dataset.pairs.items():
    arrays[f"pairs_{a}__{b}"] = np.asarray(pairs, np.int64)
  if dataset.class_names:
    arrays["class_names"] = np.asarray(dataset.class_names)
  return arrays


def save(dataset, path: str) -> str:
  """Write `dataset` to `path`: a .npz file, or (any other path) a folder of .npy files that
  training can memory-map (data.host_sampling). Returns the path; data.load(path) reads it back."""
  arrays = to_arrays(dataset)
  if path.endswith(".npz"):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path[:-4] + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path
  os.makedirs(path, exist_ok=True)
  for key, value in arrays.items():
    np.save(os.path.join(path, key + ".npy"), value)
  return path


def split_warning(dataset, split: str) -> str | None:
  """A warning when the rows evaluated as `split` include training rows (a file without
  m_train/m_test arrays: every row is both), else None."""
  if split == "train":
    return None
  overlapping = [
    m
    for m, mod in dataset.modalities.items()
    if (np.asarray(mod.train) & (np.asarray(mod.test) if split == "test" else True)).any()
  ]
  if not overlapping:
    return None
  return (
    f"{dataset.source}: the {split!r} rows of {', '.join(overlapping)} include training rows (no "
    f"separate <modality>_train/<modality>_test arrays?): these numbers measure fit, not "
    "generalisation. Add splits (graphbridge.data.tools.make_splits; docs/data.md) for held-out "
    "numbers"
  )
