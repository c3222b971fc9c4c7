"""Reading embeddings: .npz files, folders of .npy files, the embedded named sets."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from typing import Mapping
import numpy as np
from graphbridge.core.errors import DataError
from graphbridge.data.dataset import Dataset, Modality
from graphbridge.data.tables import NormalizedRows
from graphbridge.data.tools import make_splits


_PAIRS_RE = re.compile(r"^pairs_([A-Za-z][A-Za-z0-9_]*?)__([A-Za-z][A-Za-z0-9_]*)$")


_FIELD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*?)_(emb|label|id|train|test)$")


_SETS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets"
)  # graphbridge/datasets
DIGITS_PATH = os.path.join(_SETS, "digits", "digits.npz")


# Data sets shipped with the package, by name (see graphbridge/datasets/<name>/README.md).
NAMED_DATASETS = {
  name: os.path.join(_SETS, name, f"{name}.npz") for name in ("digits", "mv6", "mv8", "fsdd_chain")
}


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
    raise DataError(
      f"{source}: unrecognised array name(s) {', '.join(sorted(unknown))}; expected "
      "<modality>_emb, <modality>_label, <modality>_id, <modality>_train, <modality>_test, "
      "pairs_<a>__<b> or class_names"
    )
  modalities = {}
  for name, f in fields.items():
    if "emb" not in f:
      raise DataError(f"{source}: {name}_{next(iter(f))} given but {name}_emb is missing")
    modalities[name] = Modality(
      name,
      f["emb"],
      labels=f.get("label"),
      ids=f.get("id"),
      train=f.get("train"),
      test=f.get("test"),
    )
  for a, b in pairs:
    for m in (a, b):
      if m not in modalities:
        raise DataError(
          f"{source}: pairs_{a}__{b} names modality {m!r} but there is no {m}_emb "
          f"(modalities: {', '.join(modalities) or 'none'})"
        )
  return Dataset(modalities, pairs, class_names, source)


def _read_npy(path: str, mmap_mode: str | None = "r") -> np.ndarray:
  """One .npy file; DataError naming it for anything unreadable."""
  if os.path.getsize(path) == 0:
    raise DataError(f"{path} is empty (0 bytes)")
  try:
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
  except ValueError as exc:
    if "pickle" in str(exc).lower() or "object" in str(exc).lower():
      raise DataError(
        f"{path} holds Python objects (dtype=object), not numbers; save numeric arrays"
      ) from None
    raise DataError(f"{path} is not a readable .npy file (truncated or corrupt: {exc})") from None
  except (OSError, EOFError) as exc:
    raise DataError(f"{path} is not a readable .npy file ({type(exc).__name__}: {exc})") from None


def _npy_folder(path: str, mmap_mode: str | None = "r") -> dict[str, np.ndarray]:
  entries = sorted(os.listdir(path))
  files = [f for f in entries if f.endswith(".npy") and os.path.isfile(os.path.join(path, f))]
  if not files:
    others = [f for f in entries if f.endswith(".npz")]
    hint = (
      f" (it holds {others[0]}: pass that file as the data path)"
      if others
      else " (expected <modality>_emb.npy, pairs_<a>__<b>.npy, ...)"
    )
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
    raise DataError(
      f"could not read {path!r} as .npz: it is not a .npz file (it does not start like a zip "
      "archive); give a .npz of named arrays or a folder of .npy files"
    )
  try:
    npz = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
    raise DataError(
      f"could not read {path!r} as .npz (truncated or not a .npz: {type(exc).__name__}: {exc})"
    ) from None
  if isinstance(npz, np.ndarray):
    raise DataError(
      f"{path!r} is a single array ({npz.dtype} {npz.shape}), not a data set: give a .npz of named "
      "arrays or a folder of .npy files named <modality>_emb.npy, pairs_<a>__<b>.npy, ..."
    )
  arrays = {}
  with npz:
    for key in npz.files:
      try:
        arrays[key] = npz[key]
      except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
          raise DataError(
            f"{path}: array {key!r} holds Python objects (dtype=object), not numbers"
          ) from None
        raise DataError(
          f"{path}: array {key!r} is unreadable (truncated or corrupt: {exc})"
        ) from None
      except Exception as exc:  # noqa: BLE001  (zlib, zipfile and CRC errors of a damaged member)
        raise DataError(
          f"{path}: array {key!r} is unreadable (truncated or corrupt: {type(exc).__name__}: {exc})"
        ) from None
      if not isinstance(arrays[key], np.ndarray):  # a member that is not .npy: its raw bytes
        raw = bytes(arrays[key])
        what = "a Python pickle" if raw[:1] == b"\x80" else f"{len(raw)} bytes of something else"
        raise DataError(
          f"{path}: array {key!r} is not an array but {what}; save numeric arrays with np.savez "
          "(a pickle is never loaded)"
        )
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
    raise DataError(
      "no data given: set --config.data.path=FILE.npz (or a folder of .npy files) in "
      "graphbridge's data format, or --config.data.name=digits for the embedded set "
      f"(shipped sets: {', '.join(NAMED_DATASETS)})"
    )
  return load(name_or_path)


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


def load_for_config(config, unsplit: str | None = None) -> Dataset:
  """The data a config names: memory-mapped, normalised per batch when data.host_sampling is set
  and data.path is a folder of .npy files; otherwise as `load_named`. Test rows that include
  training rows are handled as data.unsplit says (resolve_unsplit), or as `unsplit` says."""
  name_or_path = config.data.path or config.data.name
  if (
    config.data.host_sampling and name_or_path not in NAMED_DATASETS and os.path.isdir(name_or_path)
  ):
    dataset = load_memmapped(name_or_path)
  else:
    dataset = load_named(name_or_path)
  return resolve_unsplit(dataset, unsplit or str(config.data.unsplit))


UNSPLIT_TEST_FRACTION = 0.2  # data.unsplit=auto: the share of rows (or ids) held out for test
UNSPLIT_SEED = 0  # fixed, not config.seed: runs of several seeds see the same split


def unsplit_modalities(dataset) -> dict[str, int]:
  """{modality: rows in both its train and test split} for every modality where they overlap."""
  out = {}
  for m, mod in dataset.modalities.items():
    both = int(np.count_nonzero(np.asarray(mod.train) & np.asarray(mod.test)))
    if both:
      out[m] = both
  return out


def resolve_unsplit(dataset, policy: str):
  """Apply data.unsplit to `dataset` (returned; a new Dataset where a split was made).

  stop: DataError naming the modalities and the fix; auto: modalities with neither mask get a
  seeded 80/20 split (make_splits, grouped by ids where the modality has them so an instance is in
  one split in every modality), a modality with only one mask gets the other as its complement;
  same: unchanged, with a note. Masks the file gives that overlap are never changed."""
  overlap = unsplit_modalities(dataset)
  if not overlap:
    return dataset
  where = ", ".join(f"{m} ({n} of {len(dataset.modalities[m])} rows)" for m, n in overlap.items())
  if policy == "same":
    note = (
      f"test rows include training rows in {where}: the numbers measure fit (data.unsplit=same)"
    )
    return dataclasses.replace(dataset, notes=dataset.notes + (note,))
  both_given = [
    m
    for m in overlap
    if not np.asarray(dataset.modalities[m].train).all()
    and not np.asarray(dataset.modalities[m].test).all()
  ]
  fix = (
    "add boolean <m>_train/<m>_test arrays (graphbridge.data.tools.make_splits(n, {'train': 0.8, "
    "'test': 0.2}, groups=ids)), or set --config.data.unsplit=auto (a seeded 80/20 split, said "
    "before training) or =same (evaluate on the training rows)"
  )
  if policy != "auto" or both_given:
    what = (
      f"{', '.join(both_given)}: <m>_train and <m>_test overlap"
      if both_given
      else "no <m>_train/<m>_test arrays"
    )
    raise DataError(
      f"{dataset.source}: the test rows include training rows in {where} ({what}), so the "
      f"report would measure fit, not held-out retrieval; {fix}"
    )
  modalities = dict(dataset.modalities)
  made = []
  for m in overlap:
    mod = modalities[m]
    train, test = np.asarray(mod.train), np.asarray(mod.test)
    if train.all() and test.all():
      masks = make_splits(
        len(mod),
        {"train": 1.0 - UNSPLIT_TEST_FRACTION, "test": UNSPLIT_TEST_FRACTION},
        seed=UNSPLIT_SEED,
        groups=mod.ids,
      )
      train, test = masks["train"], masks["test"]
      by = "ids" if mod.ids is not None else "rows"
      made.append(f"{m} {int(train.sum())} train / {int(test.sum())} test (by {by})")
    elif train.all():
      train = ~test
      made.append(f"{m}: train = the rows not in {m}_test")
    else:
      test = ~train
      made.append(f"{m}: test = the rows not in {m}_train")
    modalities[m] = copy.copy(mod)  # emb as it is (a memory-mapped table stays unread)
    modalities[m].train, modalities[m].test = train, test
  note = (
    f"data.unsplit=auto: {UNSPLIT_TEST_FRACTION:.0%} held out for test (seed {UNSPLIT_SEED}): "
    f"{'; '.join(made)}"
  )
  return Dataset(
    modalities, dataset.pairs, dataset.class_names, dataset.source, dataset.notes + (note,)
  )
