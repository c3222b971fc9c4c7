"""Shared fixtures: a tiny synthetic tri-modal data set and tiny configs from configs/digits.py."""

from __future__ import annotations

import importlib.util
import os

# The suite compiles many tiny programs; XLA's expensive CPU optimisation passes cost more compile
# time than they save at these sizes. Read when the CPU backend starts (first computation), so set
# here, before any; setdefault: a caller's own XLA_FLAGS (e.g. fake device counts) win.
os.environ.setdefault(
  "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

# The entry points turn JAX's persistent compilation cache on (training/compile_cache.py); the
# suite keeps its cache in a folder of its own, not in the user's ~/.cache (a caller's setting
# wins, e.g. GRAPHBRIDGE_COMPILE_CACHE=off to test without it).
os.environ.setdefault(
  "GRAPHBRIDGE_COMPILE_CACHE",
  os.path.join(__import__("tempfile").gettempdir(), f"graphbridge-tests-jax-cache-{os.getuid()}"),
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from graphbridge.data import dataset as dataset_lib
from graphbridge.data import readers as readers_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tri-modal layout mirroring the digits set: image <-> text and audio <-> text are paired
# (class-level), image <-> audio is not.
TRI_MODAL_DIMS = {"image": 6, "audio": 6, "text": 8}
TRI_MODAL_ROWS = {"image": 48, "audio": 48, "text": 24}
N_CLASSES = 4


def load_config_module(relpath: str = "configs/digits.py"):
  """Import a config file by path (configs/ is not a package)."""
  path = os.path.join(REPO_ROOT, relpath)
  name = "gb_test_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def make_modality_arrays(
  rng: np.random.Generator,
  dims: dict[str, int],
  rows: dict[str, int],
  n_classes: int = N_CLASSES,
  latent_dim: int = 6,
  noise: float = 0.3,
  test_fraction: float = 0.25,
) -> dict[str, np.ndarray]:
  """Per-modality arrays: each modality is a random linear view of shared class centres + noise.

  Returns {m_emb [N_m, d_m] float32, m_label [N_m], m_train [N_m] bool, m_test [N_m] bool}."""
  centres = rng.normal(size=(n_classes, latent_dim))
  arrays = {}
  for name, dim in dims.items():
    n = rows[name]
    labels = np.arange(n) % n_classes
    view = rng.normal(size=(latent_dim, dim))
    emb = centres[labels] @ view + noise * rng.normal(size=(n, dim))
    test = np.zeros(n, bool)
    test[rng.permutation(n)[: int(round(n * test_fraction))]] = True
    arrays[f"{name}_emb"] = emb.astype(np.float32)
    arrays[f"{name}_label"] = labels.astype(np.int64)
    arrays[f"{name}_train"] = ~test
    arrays[f"{name}_test"] = test
  return arrays


def class_pairs(
  rng: np.random.Generator, labels_a: np.ndarray, labels_b: np.ndarray, per_row: int = 2
) -> np.ndarray:
  """[P, 2] class-level pairs: each row of a joined to `per_row` random rows of b of its class."""
  pairs = []
  for i, label in enumerate(labels_a):
    same = np.nonzero(labels_b == label)[0]
    for j in rng.choice(same, size=min(per_row, len(same)), replace=False):
      pairs.append((i, int(j)))
  return np.asarray(pairs, np.int64)


def make_synthetic_arrays(
  dims: dict[str, int], rows: dict[str, int], paired: list[tuple[str, str]], seed: int = 0
) -> dict[str, np.ndarray]:
  """Arrays in the on-disk format: per-modality fields plus class-level pairs_a__b per `paired`."""
  rng = np.random.default_rng(seed)
  arrays = make_modality_arrays(rng, dims, rows)
  for a, b in paired:
    arrays[f"pairs_{a}__{b}"] = class_pairs(rng, arrays[f"{a}_label"], arrays[f"{b}_label"])
  arrays["class_names"] = np.asarray([f"c{i}" for i in range(N_CLASSES)])
  return arrays


def make_tri_modal_arrays(seed: int = 0) -> dict[str, np.ndarray]:
  """image[6] / audio[6] / text[8], 4 classes; pairs image<->text and audio<->text only."""
  return make_synthetic_arrays(
    TRI_MODAL_DIMS, TRI_MODAL_ROWS, [("image", "text"), ("audio", "text")], seed
  )


@pytest.fixture
def tri_modal_arrays() -> dict[str, np.ndarray]:
  """A fresh copy (tests may corrupt it to check errors)."""
  return make_tri_modal_arrays()


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> str:
  """The tri-modal arrays saved as one .npz, a fresh file per test module (some modules damage
  copies of it)."""
  path = str(tmp_path_factory.mktemp("data") / "tri.npz")
  np.savez(path, **make_tri_modal_arrays())
  return path


@pytest.fixture(scope="session")
def tri_modal_dataset() -> dataset_lib.Dataset:
  """Shared, treat as read-only."""
  return readers_lib.from_arrays(make_tri_modal_arrays(), source="<synthetic tri-modal>")


@pytest.fixture(scope="session")
def make_synthetic_dataset():
  """Builder: make_synthetic_dataset(dims, rows, paired, seed=0) -> Dataset (4 classes)."""

  def build(dims, rows, paired, seed=0):
    return readers_lib.from_arrays(
      make_synthetic_arrays(dims, rows, paired, seed), source="<synthetic>"
    )

  return build


@pytest.fixture(scope="session")
def digits_config_module():
  return load_config_module("configs/digits.py")


@pytest.fixture
def tiny_config(digits_config_module):
  """configs/digits.py:tiny, shrunk further for the synthetic data (hidden 16, batch 16)."""
  config = digits_config_module.get_config("tiny")
  config.model.hidden = (16,)
  config.data.batch_size = 16
  return config
