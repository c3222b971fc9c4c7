"""Data sets of pre-computed embeddings: per-modality arrays, pair indices, labels, splits.

On-disk format (one `.npz`, or a folder of `.npy` files with the same names, memory-mapped):

  per modality m:      m_emb [N_m, d_m] float      (required)
                       m_label [N_m] int           (optional; class, for class-level evaluation)
                       m_id [N_m] int              (optional; instance id shared across modalities)
                       m_train, m_test [N_m] bool  (optional; default: every row is train and test)
  per paired a, b:     pairs_a__b [P, 2] int       (row of a, row of b) training pairs
  optional:            class_names [C] str

Embeddings are L2-normalised on load. Rows of a modality that appear in no pair are still data:
cycle terms sample each modality's own train rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Sequence
import numpy as np

from graphbridge.core.rows import unit_rows
from graphbridge.core.graph import Edge, ModalityGraph, check_modality_name
from graphbridge.core.errors import GraphError
from graphbridge.core.errors import DataError, GraftError
from graphbridge.data.tools import save
from graphbridge.core.fields import CHOICES


def check_finite_rows(name: str, x: np.ndarray, what: str = "embedding") -> None:
  """Raise naming the first row with NaN or inf."""
  finite = np.isfinite(x)
  if not finite.all():
    bad_rows = np.nonzero(~finite.reshape(len(x), -1).all(axis=1))[0]
    row = int(bad_rows[0])
    kind = "NaN" if np.isnan(x[row]).any() else "inf"
    raise DataError(f"{what} {name!r} row {row} has {kind} ({len(bad_rows)} bad rows in all)")


def l2_normalize_rows(name: str, x: np.ndarray) -> np.ndarray:
  raw = np.asarray(x)
  if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
    raise DataError(f"embedding {name!r} must be numbers, got dtype {raw.dtype}")
  if np.issubdtype(raw.dtype, np.floating):
    check_finite_rows(name, raw)
  if np.issubdtype(raw.dtype, np.floating) and raw.dtype.itemsize > 4:
    big = np.nonzero((np.abs(raw) > np.finfo(np.float32).max).any(axis=1))[0]
    if len(big):
      raise DataError(
        f"embedding {name!r} row {int(big[0])} has values beyond float32's range "
        f"({len(big)} such rows); rescale the embeddings"
      )
  x = raw.astype(np.float32)
  with np.errstate(over="ignore"):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
  if not np.isfinite(norms).all():  # squares overflow float32 (values near 1e20): norms in float64
    return unit_rows(x, floor=0, wide=True)
  zero = np.nonzero(norms[:, 0] == 0)[0]
  if len(zero):
    raise DataError(
      f"embedding {name!r} row {int(zero[0])} has zero norm ({len(zero)} zero rows in all); "
      "cosine alignment needs non-zero embeddings"
    )
  return unit_rows(x, floor=0)


def remap_wide_labels(modalities: Iterable["Modality"]) -> None:
  """Class labels beyond int32 (the device's integers: they would wrap, and distinct classes
  collapse into one) become dense codes 0..C-1, in place and jointly over every modality (equal
  labels get equal codes, the order kept). Labels within int32 are left as they are."""
  labelled = [m for m in modalities if m.labels is not None and len(m.labels)]
  wide = np.iinfo(np.int32)
  if not any(m.labels.min() < wide.min or m.labels.max() > wide.max for m in labelled):
    return
  values = np.unique(np.concatenate([m.labels for m in labelled]))
  for m in labelled:
    m.labels = np.searchsorted(values, m.labels).astype(np.int64)


@dataclasses.dataclass
class Modality:
  """One modality's rows. emb: [N, d] float32 L2-normalised; masks [N] bool."""

  name: str
  emb: np.ndarray
  labels: np.ndarray | None = None
  ids: np.ndarray | None = None
  train: np.ndarray | None = None
  test: np.ndarray | None = None

  def __post_init__(self):
    check_modality_name(self.name)
    emb = np.asarray(self.emb)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
      raise DataError(
        f"{self.name}_emb must be a non-empty [rows, dim] array, got shape {emb.shape}"
      )
    self.emb = l2_normalize_rows(self.name, emb)
    n = len(self.emb)
    for field in ("labels", "ids"):
      value = getattr(self, field)
      if value is not None:
        value = np.asarray(value)
        key = f"{self.name}_{'label' if field == 'labels' else 'id'}"
        if value.shape != (n,):
          raise DataError(f"{key} has shape {value.shape} but {self.name}_emb has {n} rows")
        if not np.issubdtype(value.dtype, np.integer):
          raise DataError(f"{key} must be integers, got dtype {value.dtype}")
        setattr(self, field, value.astype(np.int64))
    for field in ("train", "test"):
      value = getattr(self, field)
      value = np.ones(n, bool) if value is None else np.asarray(value)
      if value.shape != (n,) or value.dtype != bool:
        raise DataError(
          f"{self.name}_{field} must be a bool array of shape ({n},), "
          f"got {value.dtype} {value.shape}"
        )
      setattr(self, field, value)
    if not self.train.any():
      raise DataError(f"modality {self.name!r} has no train rows ({self.name}_train is all False)")

  @property
  def dim(self) -> int:
    return int(self.emb.shape[1])

  def __len__(self) -> int:
    return len(self.emb)


@dataclasses.dataclass
class Dataset:
  """Modalities plus training pairs. pairs[(a, b)]: [P, 2] int64 rows (of a, of b)."""

  modalities: dict[str, Modality]
  pairs: dict[tuple[str, str], np.ndarray]
  class_names: tuple[str, ...] | None = None
  source: str = "<arrays>"
  notes: tuple[str, ...] = ()  # what loading did to the file's data (e.g. a split it made)

  def __post_init__(self):
    if not self.modalities:
      raise DataError(f"{self.source}: no modalities (expected arrays named <modality>_emb)")
    checked = {}
    for (a, b), pairs in self.pairs.items():
      for m in (a, b):
        if m not in self.modalities:
          raise DataError(
            f"pairs_{a}__{b}: unknown modality {m!r} (modalities: {', '.join(self.modalities)})"
          )
      if a == b:
        raise DataError(f"pairs_{a}__{b}: pairs within one modality are not translator pairs")
      if (b, a) in checked:
        raise DataError(f"both pairs_{a}__{b} and pairs_{b}__{a} given; give each pair set once")
      pairs = np.asarray(pairs)
      if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise DataError(f"pairs_{a}__{b} must have shape [P, 2], got {pairs.shape}")
      if len(pairs) == 0:
        raise DataError(f"pairs_{a}__{b} is empty: give at least one pair or leave the array out")
      if not np.issubdtype(pairs.dtype, np.integer):
        raise DataError(f"pairs_{a}__{b} must be integers, got dtype {pairs.dtype}")
      for col, m in enumerate((a, b)):
        n = len(self.modalities[m])
        bad = np.nonzero((pairs[:, col] < 0) | (pairs[:, col] >= n))[0]
        if len(bad):
          raise DataError(
            f"pairs_{a}__{b} row {int(bad[0])}: index {int(pairs[bad[0], col])} out of range "
            f"for {m} ({n} rows)"
          )
      checked[(a, b)] = pairs.astype(np.int64)
    self.pairs = checked
    if len(self.modalities) > 1:
      unpaired = [m for m in self.modalities if not any(m in ab for ab in self.pairs)]
      if unpaired:
        raise DataError(
          f"modality {unpaired[0]!r} has no pairs with any other modality; add a pairs_*__* "
          f"array for it (pair sets: {', '.join(self.pair_names) or 'none'})"
        )
    if self.class_names is not None:
      self.class_names = tuple(str(c) for c in self.class_names)
    remap_wide_labels(self.modalities.values())

  # -- views --
  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.modalities)

  @property
  def dims(self) -> dict[str, int]:
    return {m: mod.dim for m, mod in self.modalities.items()}

  @property
  def pair_names(self) -> list[str]:
    return [f"pairs_{a}__{b}" for a, b in self.pairs]

  def pairs_for(self, src: str, dst: str, split: str = "train") -> np.ndarray:
    """[P, 2] rows (of src, of dst) for an edge, from pairs_src__dst or pairs_dst__src (swapped).

    split='train' keeps pairs whose two rows are both train rows."""
    if (src, dst) in self.pairs:
      pairs = self.pairs[(src, dst)]
    elif (dst, src) in self.pairs:
      pairs = self.pairs[(dst, src)][:, ::-1]
    else:
      return np.zeros((0, 2), np.int64)
    if split == "train":
      keep = self.modalities[src].train[pairs[:, 0]] & self.modalities[dst].train[pairs[:, 1]]
      pairs = pairs[keep]
    return np.ascontiguousarray(pairs)

  def check_train_pairs(self) -> None:
    """DataError naming a pair set none of whose pairs has both rows in train (e.g. it references
    only test rows): training could not use it, yet the report would call the two modalities
    paired."""
    for (a, b), pairs in self.pairs.items():
      if not len(self.pairs_for(a, b, split="train")):
        raise DataError(
          f"pairs_{a}__{b}: none of its {len(pairs)} pairs has both rows in the train split "
          f"({a}_train and {b}_train); it would train nothing while the report calls {a} and {b} "
          "paired. Mark some of those rows as train, or leave the pair set out"
        )

  def default_graph(self, extra_edges: Iterable[str] = ()) -> ModalityGraph:
    """Nodes = modalities; edges = both directions of every pair set, plus `extra_edges`."""
    graph = ModalityGraph.build(self.dims)
    for a, b in self.pairs:
      graph = graph.add_edges_both_ways(a, b)
    for edge in extra_edges:
      if Edge.parse(edge) not in graph.edges:
        graph = graph.add_edge(edge)
    return graph

  def check_graph(self, graph: ModalityGraph, virtual: Iterable[str] = ()) -> None:
    """The graph's nodes must be modalities of the data with the same dims, except `virtual` nodes
    (spaces with no rows of their own, e.g. a shared projection space)."""
    virtual = set(virtual)
    for name, dim in graph.nodes:
      if name in virtual:
        if name in self.modalities:
          raise GraphError(f"virtual node {name!r} clashes with a modality of the data")
        continue
      if name not in self.modalities:
        raise GraphError(
          f"graph node {name!r} is not in the data (modalities: {', '.join(self.names)}); "
          "declare nodes without data as virtual (graph.virtual_nodes='name:dim')"
        )
      if self.modalities[name].dim != dim:
        raise GraphError(
          f"dimension mismatch for {name!r}: graph says {dim}, data has {self.modalities[name].dim}"
        )

  def fingerprint(self) -> str:
    h = hashlib.sha256()
    for m, mod in sorted(self.modalities.items()):  # independent of the file's modality order
      h.update(m.encode())
      h.update(np.ascontiguousarray(mod.emb[:64]).tobytes())
      h.update(str(mod.emb.shape).encode())
    for (a, b), p in sorted(self.pairs.items()):
      h.update(f"{a}__{b}{p.shape}".encode())
    return h.hexdigest()[:16]

  def content_digest(self) -> str:
    """sha256 of what a run learns from: every modality's shape, up to 256 evenly spaced embedding
    rows (cheap on memory-mapped tables), labels, ids, train/test masks, and every pair set in
    full. Another file with other rows, splits or pairs gets another digest; the same data moved
    or re-saved keeps it."""
    h = hashlib.sha256()
    for m, mod in sorted(self.modalities.items()):
      n = len(mod)
      rows = np.unique(np.linspace(0, n - 1, num=min(n, 256)).astype(np.int64))
      h.update(f"{m}{tuple(np.shape(mod.emb))}".encode())
      h.update(np.ascontiguousarray(np.asarray(mod.emb[rows], np.float32)).tobytes())
      for field in (mod.labels, mod.ids, mod.train, mod.test):
        h.update(b"-" if field is None else np.ascontiguousarray(field).tobytes())
    for (a, b), p in sorted(self.pairs.items()):
      h.update(f"{a}__{b}{p.shape}".encode())
      h.update(np.ascontiguousarray(p).tobytes())
    return h.hexdigest()[:24]

  def save(self, path: str) -> str:
    """Write to a .npz (or, for any other path, a folder of .npy files); data.load reads it back."""
    return save(self, path)

  def summary(self) -> str:
    lines = []
    for m, mod in self.modalities.items():
      labels = "" if mod.labels is None else f", {len(np.unique(mod.labels))} classes"
      lines.append(
        f"  {m}: {len(mod)} rows x {mod.dim} ({int(mod.train.sum())} train, "
        f"{int(mod.test.sum())} test{labels})"
      )
    for (a, b), p in self.pairs.items():
      lines.append(f"  pairs {a}<->{b}: {len(p)}")
    lines.extend(f"  note: {note}" for note in self.notes)
    return "\n".join(lines)


def train_rows(dataset: Dataset) -> dict[str, np.ndarray]:
  return {m: np.nonzero(mod.train)[0].astype(np.int32) for m, mod in dataset.modalities.items()}


SPLITS = CHOICES["eval.split"]


def split_rows(dataset: Dataset, modality: str, split: str) -> np.ndarray:
  """Row indices [n] of `modality` in `split` ("test", "train" or "all")."""
  mod = dataset.modalities[modality]
  if split == "test":
    mask = mod.test
  elif split == "train":
    mask = mod.train
  elif split == "all":
    mask = np.ones(len(mod), bool)
  else:
    raise ValueError(f"unknown split {split!r} (choices: test, train, all)")
  return np.nonzero(mask)[0]


def subset_modalities(dataset: Dataset, names: Sequence[str]) -> Dataset:
  """The data restricted to `names` (in the data's order): their rows and the pair sets between
  them.

  Rows, labels and splits are shared with `dataset` (no copy). Raises GraftError for a name the
  data does not have, and data.DataError if a kept modality is left without any pair set."""
  names = tuple(names)
  unknown = [n for n in names if n not in dataset.modalities]
  if unknown:
    raise GraftError(
      f"modality {unknown[0]!r} is not in the data {dataset.source} "
      f"(modalities: {', '.join(dataset.names)})"
    )
  if not names:
    raise GraftError("subset_modalities: no modality to keep")
  keep = [m for m in dataset.names if m in names]
  pairs = {(a, b): p for (a, b), p in dataset.pairs.items() if a in keep and b in keep}
  return Dataset(
    {m: dataset.modalities[m] for m in keep}, pairs, dataset.class_names, dataset.source
  )
