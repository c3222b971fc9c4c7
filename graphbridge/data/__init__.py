"""Embeddings, pairs and splits: the dataset schema, readers, sampling and the host feed.

The public face for scripts and notebooks:

  from graphbridge import data
  ds = data.load("mine.npz")          # or data.load_named("digits"), data.from_arrays({...})
"""

from graphbridge.core.errors import DataError
from graphbridge.data.dataset import Dataset, Modality
from graphbridge.data.readers import NAMED_DATASETS, from_arrays, load, load_digits, load_named

__all__ = [
  "DataError",
  "Dataset",
  "Modality",
  "NAMED_DATASETS",
  "from_arrays",
  "load",
  "load_digits",
  "load_named",
]
