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

_PAIRS_RE = re.compile(r"^pairs_([A-Za-z][A-Za-z0-9_]*?)__([A-Za-z][A-Za-z0-9_]*)$")
_FIELD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*?)_(emb|label|id|train|test)$")
DIGITS_PATH = os.path.join(os.path.dirname(__file__), "datasets", "digits", "digits.npz")
# Data sets shipped with the package, by name (see graphbridge/datasets/<name>/README.md).
NAMED_DATASETS = {name: os.path.join(os.path.dirname(__file__), "datasets", name, f"{name}.npz")
                  for name in ("digits", "mv6", "mv8", "fsdd_chain")}


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
  raw = np.asarray(x)
  if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
    raise DataError(f"embedding {name!r} must be numbers, got dtype {raw.dtype}")
  if np.issubdtype(raw.dtype, np.floating):
    check_finite_rows(name, raw)
  if np.issubdtype(raw.dtype, np.floating) and raw.dtype.itemsize > 4:
    big = np.nonzero((np.abs(raw) > np.finfo(np.float32).max).any(axis=1))[0]
    if len(big):
      raise DataError(f"embedding {name!r} row {int(big[0])} has values beyond float32's range "
                      f"({len(big)} such rows); rescale the embeddings")
  x = raw.astype(np.float32)
  with np.errstate(over="ignore"):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
  if not np.isfinite(norms).all():  # squares overflow float32 (values near 1e20): norms in float64
    x64 = x.astype(np.float64)
    return (x64 / np.linalg.norm(x64, axis=1, keepdims=True)).astype(np.float32)
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

  def check_train_pairs(self) -> None:
    """DataError naming a pair set none of whose pairs has both rows in train (e.g. it references
    only test rows): training could not use it, yet the report would call the two modalities paired."""
    for (a, b), pairs in self.pairs.items():
      if not len(self.pairs_for(a, b, split="train")):
        raise DataError(f"pairs_{a}__{b}: none of its {len(pairs)} pairs has both rows in the train split "
                        f"({a}_train and {b}_train); it would train nothing while the report calls {a} and {b} "
                        "paired. Mark some of those rows as train, or leave the pair set out")

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
    from graphbridge.data_tools import save
    return save(self, path)

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


def _read_npy(path: str, mmap_mode: str | None = "r") -> np.ndarray:
  """One .npy file; DataError naming it for anything unreadable."""
  if os.path.getsize(path) == 0:
    raise DataError(f"{path} is empty (0 bytes)")
  try:
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
  except ValueError as exc:
    if "pickle" in str(exc).lower() or "object" in str(exc).lower():
      raise DataError(f"{path} holds Python objects (dtype=object), not numbers; save numeric arrays") from None
    raise DataError(f"{path} is not a readable .npy file (truncated or corrupt: {exc})") from None
  except (OSError, EOFError) as exc:
    raise DataError(f"{path} is not a readable .npy file ({type(exc).__name__}: {exc})") from None


def _npy_folder(path: str, mmap_mode: str | None = "r") -> dict[str, np.ndarray]:
  entries = sorted(os.listdir(path))
  files = [f for f in entries if f.endswith(".npy") and os.path.isfile(os.path.join(path, f))]
  if not files:
    others = [f for f in entries if f.endswith(".npz")]
    hint = f" (it holds {others[0]}: pass that file as the data path)" if others else \
        " (expected <modality>_emb.npy, pairs_<a>__<b>.npy, ...)"
    raise DataError(f"data folder {path!r} holds no .npy files{hint}")
  return {f[:-4]: _read_npy(os.path.join(path, f), mmap_mode) for f in files}


def _npz_arrays(path: str) -> dict[str, np.ndarray]:
  """Every array of a .npz; DataError naming the file (and the array) for anything unreadable."""
  import zipfile
  if os.path.getsize(path) == 0:
    raise DataError(f"{path} is empty (0 bytes)")
  with open(path, "rb") as f:
    head = f.read(6)
  if not head.startswith(b"PK") and not head.startswith(b"\x93NUMPY"):
    raise DataError(f"could not read {path!r} as .npz: it is not a .npz file (it does not start like a zip "
                    "archive); give a .npz of named arrays or a folder of .npy files")
  try:
    npz = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
    raise DataError(f"could not read {path!r} as .npz (truncated or not a .npz: {type(exc).__name__}: "
                    f"{exc})") from None
  if isinstance(npz, np.ndarray):
    raise DataError(f"{path!r} is a single array ({npz.dtype} {npz.shape}), not a data set: give a .npz of named "
                    "arrays or a folder of .npy files named <modality>_emb.npy, pairs_<a>__<b>.npy, ...")
  arrays = {}
  with npz:
    for key in npz.files:
      try:
        arrays[key] = npz[key]
      except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
          raise DataError(f"{path}: array {key!r} holds Python objects (dtype=object), not numbers") from None
        raise DataError(f"{path}: array {key!r} is unreadable (truncated or corrupt: {exc})") from None
      except Exception as exc:  # noqa: BLE001  (zlib, zipfile and CRC errors of a damaged member)
        raise DataError(f"{path}: array {key!r} is unreadable (truncated or corrupt: {type(exc).__name__}: "
                        f"{exc})") from None
  return arrays


def load(path: str) -> Dataset:
  """Load a data set from a .npz file or a folder of .npy files (memory-mapped)."""
  if not os.path.exists(path):
    raise DataError(f"data path {path!r} does not exist")
  if os.path.isdir(path):
    return from_arrays(_npy_folder(path), source=path)
  if not os.access(path, os.R_OK):
    raise DataError(f"data path {path!r} is not readable (permissions)")
  return from_arrays(_npz_arrays(path), source=path)


def load_digits() -> Dataset:
  """The embedded tri-modal digits set (image / audio / text); see datasets/digits/README.md."""
  return load(DIGITS_PATH)


def load_named(name_or_path: str) -> Dataset:
  """A shipped set by name ('digits', 'mv6', 'mv8', 'fsdd_chain'; see NAMED_DATASETS) or a path to a
  .npz / folder of .npy files."""
  if name_or_path == "digits":
    return load_digits()
  if name_or_path in NAMED_DATASETS:
    return load(NAMED_DATASETS[name_or_path])
  if not name_or_path:
    raise DataError("no data given: set --config.data.path=FILE.npz (or a folder of .npy files) in "
                    "graphbridge's data format, or --config.data.name=digits for the embedded set "
                    f"(shipped sets: {', '.join(NAMED_DATASETS)})")
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


POSITIVES = ("auto", "label", "pair")


def _within_class_structure(dataset: Dataset, src: str, dst: str, pairs: np.ndarray, max_pairs: int = 600,
                            seed: int = 0) -> tuple[float, float]:
  """(r, null) for pairs [P, 2] of (src row, dst row) whose rows share labels.

  r: correlation, over pairs of pairs (i, k) in the same class, between cos(src_i, src_k) and
  cos(dst_i, dst_k). Pairs that join instances carry structure inside a class (two similar
  images have similar captions), so r > 0; pairs drawn at random within a class (class-level
  pairs) carry none, so r ~ 0. null: r after shuffling the pairing within each class (3 draws,
  the largest), the value class-level pairing would give on these rows."""
  rng = np.random.default_rng(seed)
  if len(pairs) > max_pairs:
    pairs = pairs[np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
  a = dataset.modalities[src].emb[pairs[:, 0]]
  b = dataset.modalities[dst].emb[pairs[:, 1]]
  labels = dataset.modalities[src].labels[pairs[:, 0]]
  same = (labels[:, None] == labels[None, :]) & ~np.eye(len(pairs), dtype=bool)
  if same.sum() < 10:
    return 0.0, 0.0
  sa = (a @ a.T)[same]

  def corr(order: np.ndarray) -> float:
    sb = (b[order] @ b[order].T)[same]
    if np.std(sa) < 1e-6 or np.std(sb) < 1e-6:
      return 0.0  # one side constant within classes (e.g. one text per class): class-level
    return float(np.corrcoef(sa, sb)[0, 1])

  null = 0.0
  for _ in range(3):
    order = np.arange(len(pairs))
    for c in np.unique(labels):
      idx = np.nonzero(labels == c)[0]
      order[idx] = rng.permutation(idx)
    null = max(null, corr(order))
  return corr(np.arange(len(pairs))), null


def choose_positives(dataset: Dataset, src: str, dst: str, requested: str = "auto") -> tuple[str, str]:
  """InfoNCE positives for the pair set of src and dst: ("label" | "pair", why).

  requested "label" or "pair" is kept (label falls back to pair where the pairs do not join rows
  of one class). "auto" reads the pairs: "pair" (each pair is its own positive: instance pairs)
  where the two modalities carry ids that agree along the pairs, where there are no labels, where
  the labels disagree along the pairs, or where paired rows keep their within-class similarity
  structure (instance pairs of labelled data, e.g. captions of labelled images); "label" (rows of
  one class are all positives) where pairs join rows of one class with no instance structure, as
  in class-level pairs (the embedded digits set)."""
  if requested not in POSITIVES:
    raise DataError(f"loss.infonce_positives={requested!r}: choose one of {', '.join(POSITIVES)}")
  pairs = dataset.pairs_for(src, dst)
  agree = pair_label_agreement(dataset, src, dst, pairs)
  if requested == "pair":
    return "pair", "asked for"
  if requested == "label":
    return ("label", "asked for") if agree else ("pair", "asked for label, but pairs join different labels")
  a, b = dataset.modalities[src], dataset.modalities[dst]
  if a.ids is not None and b.ids is not None and len(pairs) and np.array_equal(a.ids[pairs[:, 0]],
                                                                               b.ids[pairs[:, 1]]):
    return "pair", "ids agree along the pairs"
  if a.labels is None or b.labels is None:
    return "pair", "no labels"
  if not agree:
    return "pair", "pairs join rows of different labels"
  r, null = _within_class_structure(dataset, src, dst, pairs)
  if r > max(0.05, 2.0 * null):
    return "pair", f"instance structure within classes (r={r:.2f}, shuffled {null:.2f})"
  return "label", f"class-level pairs (within-class r={r:.2f}, shuffled {null:.2f})"


def resolve_positives(positives, src: str, dst: str) -> str:
  """A per-pair-set choice from a config value ("label" / "pair") or a {"a->b": choice} mapping."""
  if isinstance(positives, Mapping):
    return positives.get(f"{src}->{dst}", positives.get(f"{dst}->{src}", "pair"))
  return positives


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
                   infonce_positives: str | Mapping[str, str] = "label") -> dict:
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
  if isinstance(infonce_positives, Mapping):  # per pair set: label positives only if all agree
    infonce_positives = ("label" if infonce_positives and all(v == "label" for v in infonce_positives.values())
                         else "pair")
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


# ---- data larger than RAM: memory-mapped tables, host-side sampling -----------------------------

_READ_POOL = None
READ_THREADS = 32  # concurrent row reads: random reads from disk are latency-bound, not bandwidth-bound


def _read_rows(raw, sorted_ids: np.ndarray) -> np.ndarray:
  """raw[sorted_ids] as float32; large requests are split over a thread pool (numpy releases the
  GIL while it copies, so the page faults of the chunks overlap)."""
  global _READ_POOL
  if len(sorted_ids) < 256 or READ_THREADS <= 1:
    return np.asarray(raw[sorted_ids], np.float32)
  if _READ_POOL is None:
    from concurrent.futures import ThreadPoolExecutor
    _READ_POOL = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="graphbridge-read")
  out = np.empty((len(sorted_ids),) + tuple(raw.shape[1:]), np.float32)
  bounds = np.linspace(0, len(sorted_ids), min(READ_THREADS, len(sorted_ids) // 32) + 1).astype(int)

  def read(i):
    out[bounds[i]:bounds[i + 1]] = raw[sorted_ids[bounds[i]:bounds[i + 1]]]
  list(_READ_POOL.map(read, range(len(bounds) - 1)))
  return out


class NormalizedRows:
  """Read-only [N, d] view of an embedding table on disk (a memory-mapped .npy of any float
  dtype): indexing reads only the rows asked for and returns them float32, L2-normalised.

  Stands in for `Modality.emb` of a data set loaded with `load_memmapped`, so evaluation code that
  indexes rows (emb[rows], emb[mask], emb[:64]) works unchanged; np.asarray(view) reads the whole
  table (what the device sampler needs) in chunks. Non-finite and zero rows are reported when read."""

  def __init__(self, raw, name: str):
    if np.ndim(raw) != 2:
      raise DataError(f"{name}_emb must be a [rows, dim] array, got shape {np.shape(raw)}")
    if not np.issubdtype(raw.dtype, np.floating):
      raise DataError(f"{name}_emb must be floating point, got dtype {raw.dtype}")
    self.raw, self.name = raw, name
    self.shape = (int(raw.shape[0]), int(raw.shape[1]))
    mapping = getattr(raw, "_mmap", None)  # np.memmap's mmap object (np.load(mmap_mode=...) of a file)
    if mapping is not None and hasattr(mapping, "madvise"):
      import mmap
      # batches read scattered rows: the kernel's read-ahead would page in ~128 KB around each one
      mapping.madvise(mmap.MADV_RANDOM)
    self.dtype = np.dtype(np.float32)
    self.ndim = 2

  def __len__(self) -> int:
    return self.shape[0]

  def __repr__(self) -> str:
    return f"NormalizedRows({self.name!r}, shape={self.shape}, on disk as {self.raw.dtype})"

  def _row_ids(self, index) -> np.ndarray | int:
    if isinstance(index, slice):
      return np.arange(*index.indices(self.shape[0]))
    if isinstance(index, (int, np.integer)):
      return int(index)
    index = np.asarray(index)
    if index.dtype == bool:
      if index.shape != (self.shape[0],):
        raise IndexError(f"boolean index of shape {index.shape} for {self.shape[0]} rows of {self.name}")
      return np.nonzero(index)[0]
    return index

  def __getitem__(self, index):
    rest = ()
    if isinstance(index, tuple):
      index, rest = index[0], index[1:]
    ids = self._row_ids(index)
    if isinstance(ids, int):
      out = self.rows(np.asarray([ids]))[0]
      return out[rest] if rest else out
    out = self.rows(ids.reshape(-1)).reshape(ids.shape + (self.shape[1],))
    return out[(slice(None),) * ids.ndim + rest] if rest else out

  def rows(self, ids: np.ndarray) -> np.ndarray:
    """[len(ids), d] float32, L2-normalised; reads each distinct row once, in file order."""
    ids = np.asarray(ids, np.int64)
    if len(ids) == 0:
      return np.zeros((0, self.shape[1]), np.float32)
    unique, inverse = np.unique(ids, return_inverse=True)
    if unique[0] < -self.shape[0] or unique[-1] >= self.shape[0]:
      raise IndexError(f"row {int(unique[-1])} out of range for {self.name} ({self.shape[0]} rows)")
    x = _read_rows(self.raw, unique)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
      row = int(unique[np.argmin(finite)])
      kind = "NaN" if np.isnan(x[np.argmin(finite)]).any() else "inf"
      raise DataError(f"embedding {self.name!r} row {row} has {kind}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not norms.all():
      raise DataError(f"embedding {self.name!r} row {int(unique[np.argmin(norms[:, 0])])} has zero norm; "
                      "cosine alignment needs non-zero embeddings")
    x = x / norms
    return x if len(unique) == len(ids) and np.array_equal(unique, ids) else x[inverse.reshape(-1)]

  def __array__(self, dtype=None, copy=None):
    out = np.empty(self.shape, np.float32)
    chunk = max(1, (64 << 20) // max(4 * self.shape[1], 1))  # ~64 MB at a time
    for start in range(0, self.shape[0], chunk):
      out[start:start + chunk] = self.rows(np.arange(start, min(start + chunk, self.shape[0])))
    return out if dtype is None else out.astype(dtype)


def load_memmapped(path: str) -> Dataset:
  """A folder of .npy files, memory-mapped, with embeddings left on disk (data.host_sampling).

  Unlike `load`, nothing reads a whole embedding table: each Modality.emb is a `NormalizedRows`
  view that L2-normalises the rows it reads. Names, labels, masks and pair ranges are checked as
  `from_arrays` checks them (run on a one-column zero-stride stand-in of each table, so no file
  data is read). A .npz cannot be memory-mapped and is loaded as usual."""
  if not os.path.isdir(path):
    return load(path)
  arrays = _npy_folder(path)
  tables, stand_ins = {}, {}
  for key, value in arrays.items():
    match = _FIELD_RE.match(key)
    if match and match.group(2) == "emb" and np.ndim(value) == 2 and min(np.shape(value)) > 0:
      tables[match.group(1)] = NormalizedRows(value, match.group(1))
      stand_ins[key] = np.broadcast_to(np.ones((1, 1), np.float32), (value.shape[0], 1))
  dataset = from_arrays({**arrays, **stand_ins}, source=path)
  for name, table in tables.items():
    dataset.modalities[name].emb = table
  return dataset


def load_for_config(config) -> Dataset:
  """The data a config names: memory-mapped, normalised per batch when data.host_sampling is set
  and data.path is a folder of .npy files; otherwise as `load_named`."""
  name_or_path = config.data.get("path") or config.data.name
  if config.data.get("host_sampling", False) and name_or_path not in NAMED_DATASETS and os.path.isdir(name_or_path):
    return load_memmapped(name_or_path)
  return load_named(name_or_path)


def materialize_tables(arrays):
  """Sampler arrays with every `NormalizedRows` view read into a numpy array (the device sampler
  needs whole tables); other leaves are returned as they are."""
  if isinstance(arrays, NormalizedRows):
    return np.asarray(arrays)
  if isinstance(arrays, Mapping):
    return {k: materialize_tables(v) for k, v in arrays.items()}
  return arrays


def is_table(keys: Sequence[str], leaf) -> bool:
  """Embedding tables of sampler arrays: arrays["emb"][m] or arrays["<name>_emb"], [N, d]."""
  return (isinstance(leaf, NormalizedRows) or
          (np.ndim(leaf) == 2 and bool(keys) and ("emb" in keys[:-1] or keys[-1].endswith("_emb"))))


class HostSampler:
  """Draws on the host the batch `sample(arrays, key, batch_size)` draws on device, reading only
  the batch's rows of each embedding table (numpy fancy indexing on a memmap) per step.

  The objective's own sampler runs (jitted, on the host's CPU device) on the small arrays (row
  lists, pairs, labels) with each [N, d] table replaced by an index table [N, 2] uint32 (table,
  row): its output names, for every batch entry, the table row the device sampler would have
  taken. So batches are the device sampler's batches, key for key. The sampler may only gather
  table rows (jnp.take / indexing), as every built-in objective does; anything else is an error.

  arrays: the objective's sampler arrays (tables may be numpy arrays or NormalizedRows views).
  rng: the train state's RNG key; step s uses fold_in(rng, s), as `train.make_device_step` does."""

  def __init__(self, sample, arrays: Mapping, batch_size: int, rng):
    import jax
    import jax.numpy as jnp
    self.batch_size = int(batch_size)
    flat, self._treedef = jax.tree_util.tree_flatten_with_path(
        arrays, is_leaf=lambda x: isinstance(x, NormalizedRows))
    keys = [[str(getattr(k, "key", getattr(k, "idx", k))) for k in path] for path, _ in flat]
    leaves = [leaf for _, leaf in flat]
    self.tables = [leaf for k, leaf in zip(keys, leaves) if is_table(k, leaf)]
    self._table_pos = [i for i, (k, leaf) in enumerate(zip(keys, leaves)) if is_table(k, leaf)]
    small_pos = [i for i in range(len(leaves)) if i not in self._table_pos]
    sizes = [len(t) for t in self.tables]
    cpu = jax.local_devices(backend="cpu")[0]  # this process's own CPU, also in a multi-process run
    self._small = jax.device_put([np.asarray(leaves[i]) for i in small_pos], cpu)
    self._rng = jax.device_put(np.asarray(jax.device_get(rng)), cpu)
    treedef, table_pos = self._treedef, list(self._table_pos)

    def rebuild(small, tables):
      out = [None] * len(leaves)
      for i, v in zip(small_pos, small):
        out[i] = v
      for i, v in zip(table_pos, tables):
        out[i] = v
      return jax.tree_util.tree_unflatten(treedef, out)

    def index_batch(small, rng, step):
      index_tables = [jnp.stack([jnp.full((n,), t, jnp.uint32), jnp.arange(n, dtype=jnp.uint32)], axis=1)
                      for t, n in enumerate(sizes)]
      return sample(rebuild(small, index_tables), jax.random.fold_in(rng, step), self.batch_size)

    self._index_batch = jax.jit(index_batch)
    # which batch leaves are rows of a table: compare with the sampler's output on the real dtypes
    real = jax.eval_shape(
        lambda small, tables, rng: sample(rebuild(small, tables), rng, self.batch_size),
        self._small, [jax.ShapeDtypeStruct(t.shape, np.dtype(t.dtype)) for t in self.tables], self._rng)
    index = jax.eval_shape(index_batch, self._small, self._rng, np.int32(0))
    self.batch_shapes = real  # ShapeDtypeStructs of one batch
    real_leaves, self._batch_treedef = jax.tree_util.tree_flatten_with_path(real)
    index_leaves = jax.tree.leaves(index)
    self.gathered = []
    for (path, r), x in zip(real_leaves, index_leaves):
      from_table = (x.dtype == np.uint32 and x.shape[-1:] == (2,) and np.issubdtype(r.dtype, np.floating))
      if from_table and x.shape[:-1] != r.shape[:-1]:
        from_table = False
      if not from_table and (x.shape != r.shape or x.dtype != r.dtype):
        raise DataError(f"host sampling: batch entry {jax.tree_util.keystr(path)} is not a plain gather of "
                        "table rows (the objective's sample() transforms them); use data.host_sampling=False")
      self.gathered.append(from_table)

  def indices(self, step: int) -> list:
    """The batch for `step` with table rows as (table, row) indices: a flat list of numpy leaves."""
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(self._index_batch(self._small, self._rng, np.int32(step)))]

  def _rows(self, leaf: np.ndarray) -> np.ndarray:
    table = np.unique(leaf[..., 0])
    if len(table) != 1:
      raise DataError("host sampling: one batch entry gathers rows of several tables")
    rows = self.tables[int(table[0])]
    ids = leaf[..., 1].astype(np.int64)
    flat = rows.rows(ids.reshape(-1)) if isinstance(rows, NormalizedRows) else np.asarray(rows[ids.reshape(-1)])
    return flat.reshape(ids.shape + (rows.shape[1],))

  def batch(self, step: int) -> dict:
    """The whole batch for `step`, as numpy (single process)."""
    import jax
    leaves = [self._rows(x) if g else x for x, g in zip(self.indices(step), self.gathered)]
    return jax.tree_util.tree_unflatten(self._batch_treedef, leaves)

  def global_batch(self, step: int, shardings) -> dict:
    """The batch for `step` as global jax.Arrays laid out by `shardings` (a pytree of Shardings
    like the batch): each process reads only the rows its own devices hold."""
    import jax
    sharding_leaves = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    out = []
    for x, g, sharding in zip(self.indices(step), self.gathered, sharding_leaves):
      if g:  # x: [..., 2] (table, row) -> rows [..., d]; read only the slice this process holds
        shape = x.shape[:-1] + (self.tables[int(x.reshape(-1, 2)[0, 0])].shape[1],)
        part = lambda index, x=x: self._rows(x[tuple(index[:-1])])[..., index[-1]]
      else:
        shape, part = x.shape, (lambda index, x=x: x[index])
      out.append(jax.make_array_from_callback(shape, sharding, part))
    return jax.tree_util.tree_unflatten(self._batch_treedef, out)


class Prefetcher:
  """Runs `produce(step)` for steps start, start+1, ... < stop on `size` worker threads, up to `size`
  steps ahead (reading rows from disk while the device trains); iterating gives the results in step
  order. An exception in produce is raised by the iteration that reaches its step."""

  def __init__(self, produce, start: int, stop: int, size: int = 4):
    import collections
    from concurrent.futures import ThreadPoolExecutor
    size = max(int(size), 1)
    self._produce = produce
    self._pool = ThreadPoolExecutor(size, thread_name_prefix="graphbridge-host-sampler")
    self._steps = iter(range(start, stop))
    self._pending: "collections.deque" = collections.deque()
    for _ in range(size):
      self._submit()

  def _submit(self) -> None:
    step = next(self._steps, None)
    if step is not None:
      self._pending.append(self._pool.submit(self._produce, step))

  def __iter__(self):
    return self

  def __next__(self):
    if not self._pending:
      raise StopIteration
    future = self._pending.popleft()
    self._submit()
    return future.result()

  def close(self) -> None:
    for future in self._pending:
      future.cancel()
    self._pending.clear()
    self._pool.shutdown(wait=True, cancel_futures=True)


from graphbridge.data_tools import make_splits, pairs_from_ids  # noqa: E402,F401
