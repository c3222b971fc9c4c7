"""graphbridge: align pre-computed embeddings of many modalities through a graph of translators.

  import graphbridge
  run = graphbridge.fit("digits:tiny", workdir="/tmp/gb")   # or graphbridge.load("/tmp/gb")

The names below are imported on first use, so `import graphbridge.data` (or any other part) does
not load the whole library.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
  "Run": "graphbridge.api",
  "config": "graphbridge.api",
  "fit": "graphbridge.api",
  "load": "graphbridge.api",
  "Edge": "graphbridge.core.graph",
  "ModalityGraph": "graphbridge.core.graph",
  "path_name": "graphbridge.core.graph",
  **{
    name: "graphbridge.core.errors"
    for name in (
      "GraphError",
      "ConfigError",
      "DataError",
      "GraftError",
      "CheckpointError",
      "CheckpointCorruptError",
      "CheckpointMismatchError",
      "CheckpointWriteError",
      "NonFiniteError",
      "RunMismatchError",
      "WorkdirLockedError",
      "WorkdirError",
      "RunInterrupted",
      "DeviceMemoryError",
    )
  },
  "EdgeLayout": "graphbridge.model.translators",
  "TranslatorArch": "graphbridge.model.translators",
  "compose": "graphbridge.model.translators",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'graphbridge' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
