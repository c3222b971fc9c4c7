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
import os
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from graphbridge.graph import Edge, GraphError, ModalityGraph, check_modality_name

_FIELDS = ("emb", "label", "id", "train", "test")
_PAIRS_RE = re.compile(r"^pairs_([A-Za-z][A-Za-z0-9_]*?)__([A-Za-z][A-Za-z0-9_]*)$")
_FIELD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*?)_(emb|label|id|train|test)$")
DIGITS_PATH = os.path.join(os.path.dirname(__file__), "datasets", "digits", "digits.npz")


class DataError(ValueError):
  """The data cannot be used as given; the message names the array and row."""


def check_finite_rows(name: str, x: np.ndarray, what: str = "embedding") -> None:
  """Raise naming the first row with NaN or inf."""
  finite = np.isfinite(x)
  if not finite.all():
    bad_rows = np.nonzero(~finite.reshape(len(x), -1).all(axis=1))[0]
    row = int(bad_rows[0])
    kind = "NaN" if np.isnan(x[row]).any() else "inf"
    raise DataError(f"{what} {name!r} row {row} has {kind} ({len(bad_rows)} bad rows in all)")


def l2_normalize_rows(name: str, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  check_finite_rows(name, x)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  zero = np.nonzero(norms[:, 0] == 0)[0]
  if len(zero):
    raise DataError(f"embedding {name!r} row {int(zero[0])} has zero norm ({len(zero)} zero rows in all); "
                    "cosine alignment needs non-zero embeddings")
  return x / norms


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
      raise DataError(f"{self.name}_emb must be a non-empty [rows, dim] array, got shape {emb.shape}")
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
        raise DataError(f"{self.name}_{field} must be a bool array of shape ({n},), "
                        f"got {value.dtype} {value.shape}")
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

  def __post_init__(self):
    if not self.modalities:
      raise DataError(f"{self.source}: no modalities (expected arrays named <modality>_emb)")
    checked = {}
    for (a, b), pairs in self.pairs.items():
      for m in (a, b):
        if m not in self.modalities:
          raise DataError(f"pairs_{a}__{b}: unknown modality {m!r} (modalities: {', '.join(self.modalities)})")
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
          raise DataError(f"pairs_{a}__{b} row {int(bad[0])}: index {int(pairs[bad[0], col])} out of range "
                          f"for {m} ({n} rows)")
      checked[(a, b)] = pairs.astype(np.int64)
    self.pairs = checked
    if len(self.modalities) > 1:
      unpaired = [m for m in self.modalities if not any(m in ab for ab in self.pairs)]
      if unpaired:
        raise DataError(f"modality {unpaired[0]!r} has no pairs with any other modality; add a pairs_*__* "
                        f"array for it (pair sets: {', '.join(self.pair_names) or 'none'})")
    if self.class_names is not None:
      self.class_names = tuple(str(c) for c in self.class_names)

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
        raise GraphError(f"graph node {name!r} is not in the data (modalities: {', '.join(self.names)}); "
                         "declare nodes without data as virtual (graph.virtual_nodes='name:dim')")
      if self.modalities[name].dim != dim:
        raise GraphError(f"dimension mismatch for {name!r}: graph says {dim}, data has "
                         f"{self.modalities[name].dim}")

  def fingerprint(self) -> str:
    h = hashlib.sha256()
    for m, mod in sorted(self.modalities.items()):  # independent of the file's modality order
      h.update(m.encode())
      h.update(np.ascontiguousarray(mod.emb[:64]).tobytes())
      h.update(str(mod.emb.shape).encode())
    for (a, b), p in sorted(self.pairs.items()):
      h.update(f"{a}__{b}{p.shape}".encode())
    return h.hexdigest()[:16]

  def summary(self) -> str:
    lines = []
    for m, mod in self.modalities.items():
      labels = "" if mod.labels is None else f", {len(np.unique(mod.labels))} classes"
      lines.append(f"  {m}: {len(mod)} rows x {mod.dim} ({int(mod.train.sum())} train, "
                   f"{int(mod.test.sum())} test{labels})")
    for (a, b), p in self.pairs.items():
      lines.append(f"  pairs {a}<->{b}: {len(p)}")
    return "\n".join(lines)


# ---- loading ------------------------------------------------------------------------------------

def from_arrays(arrays: Mapping[str, np.ndarray], source: str = "<arrays>") -> Dataset:
  """Build a Dataset from a name -> array mapping in the on-disk format (see module docstring)."""
  fields: dict[str, dict[str, np.ndarray]] = {}
  pairs: dict[tuple[str, str], np.ndarray] = {}
  class_names = None
  unknown = []
  for key in arrays:
    pair_match = _PAIRS_RE.match(key)
    field_match = _FIELD_RE.match(key)
    if key == "class_names":
      class_names = np.asarray(arrays[key]).tolist()
    elif pair_match:
      pairs[(pair_match.group(1), pair_match.group(2))] = np.asarray(arrays[key])
    elif field_match:
      fields.setdefault(field_match.group(1), {})[field_match.group(2)] = arrays[key]
    else:
      unknown.append(key)
  if unknown:
    raise DataError(f"{source}: unrecognised array name(s) {', '.join(sorted(unknown))}; expected "
                    "<modality>_emb, <modality>_label, <modality>_id, <modality>_train, <modality>_test, "
                    "pairs_<a>__<b> or class_names")
  modalities = {}
  for name, f in fields.items():
    if "emb" not in f:
      raise DataError(f"{source}: {name}_{next(iter(f))} given but {name}_emb is missing")
    modalities[name] = Modality(name, f["emb"], labels=f.get("label"), ids=f.get("id"),
                                train=f.get("train"), test=f.get("test"))
  for (a, b) in pairs:
    for m in (a, b):
      if m not in modalities:
        raise DataError(f"{source}: pairs_{a}__{b} names modality {m!r} but there is no {m}_emb "
                        f"(modalities: {', '.join(modalities) or 'none'})")
  return Dataset(modalities, pairs, class_names, source)


def load(path: str) -> Dataset:
  """Load a data set from a .npz file or a folder of .npy files (memory-mapped)."""
  if not os.path.exists(path):
    raise DataError(f"data path {path!r} does not exist")
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
    if not files:
      raise DataError(f"data folder {path!r} holds no .npy files")
    arrays = {f[:-4]: np.load(os.path.join(path, f), mmap_mode="r", allow_pickle=False) for f in files}
    return from_arrays(arrays, source=path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (ValueError, OSError) as exc:
    raise DataError(f"could not read {path!r} as .npz: {exc}") from exc
  return from_arrays(arrays, source=path)


def load_digits() -> Dataset:
  """The embedded tri-modal digits set (image / audio / text); see datasets/digits/README.md."""
  return load(DIGITS_PATH)


def load_named(name_or_path: str) -> Dataset:
  """'digits' (the embedded set) or a path to a .npz / folder of .npy files."""
  if name_or_path == "digits":
    return load_digits()
  if not name_or_path:
    raise DataError("no data given: set --config.data.path=FILE.npz (or a folder of .npy files) in "
                    "graphbridge's data format, or --config.data.name=digits for the embedded set")
  return load(name_or_path)


# ---- sampling -----------------------------------------------------------------------------------

def train_rows(dataset: Dataset) -> dict[str, np.ndarray]:
  return {m: np.nonzero(mod.train)[0].astype(np.int32) for m, mod in dataset.modalities.items()}


def pair_label_agreement(dataset: Dataset, src: str, dst: str, pairs: np.ndarray) -> bool:
  """True if both modalities have labels and every pair joins rows of the same class."""
  a, b = dataset.modalities[src], dataset.modalities[dst]
  if a.labels is None or b.labels is None or len(pairs) == 0:
    return False
  return bool(np.all(a.labels[pairs[:, 0]] == b.labels[pairs[:, 1]]))


def device_arrays(dataset: Dataset, graph: ModalityGraph, pair_sets: Sequence[Edge],
                  starts: Sequence[str]) -> dict:
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
      raise DataError(f"{edge.src}<->{edge.dst}: a pair loss needs train pairs but there are none (pair sets: "
                      f"{', '.join(dataset.pair_names) or 'none'})")
    out["pairs"][edge.name] = pairs.astype(np.int32)
    labels = dataset.modalities[edge.src].labels
    out["pair_labels"][edge.name] = (labels[pairs[:, 0]] if labels is not None
                                     else np.arange(len(pairs))).astype(np.int32)
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


def aligned_arrays(dataset: Dataset, modalities: Sequence[str], pair_keys: Sequence[str],
                   infonce_positives: str = "label") -> dict:
  """Arrays for instance-aligned sampling: row i of every modality is the same sample.

  {"emb": {m: [N, d_m]}, "rows": [n_train] int32 (train in every modality), "labels": [N] int32}"""
  sizes = {m: len(dataset.modalities[m]) for m in modalities}
  if len(set(sizes.values())) != 1:
    raise DataError(f"aligned batches need instance-aligned modalities (row i of every modality is the same "
                    f"sample), but row counts differ: {sizes}")
  n = next(iter(sizes.values()))
  for key in pair_keys:
    a, b = key.split("->")
    pairs = dataset.pairs_for(a, b, split="all")
    if not (len(pairs) and np.array_equal(pairs[:, 0], pairs[:, 1])):
      raise DataError(f"aligned batches: pairs_{a}__{b} must pair row i with row i (instance-aligned data)")
  train = np.ones(n, bool)
  for m in modalities:
    train &= dataset.modalities[m].train
  if not train.any():
    raise DataError("aligned batches: no row is a train row in every modality")
  labels = next((dataset.modalities[m].labels for m in modalities
                 if dataset.modalities[m].labels is not None), None)
  if labels is None or infonce_positives == "pair":
    labels = np.arange(n)
  return {"emb": {m: dataset.modalities[m].emb for m in modalities},
          "rows": np.nonzero(train)[0].astype(np.int32), "labels": labels.astype(np.int32)}


def sample_aligned_batch(arrays: dict, key, batch_size: int, pair_keys: Sequence[str]) -> dict:
  """One instance-aligned batch: the same rows of every modality. Jit-friendly."""
  import jax
  import jax.numpy as jnp
  pick = arrays["rows"][jax.random.randint(key, (batch_size,), 0, arrays["rows"].shape[0])]
  labels = jnp.take(arrays["labels"], pick)
  return {"start": {m: jnp.take(e, pick, axis=0) for m, e in arrays["emb"].items()},
          "pair_label": {k: labels for k in pair_keys}}
