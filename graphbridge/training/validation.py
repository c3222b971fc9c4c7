"""Validation during training: retrieval on training rows held back from training.

Off by default. With `train.validate_every = N > 0`, a fraction `train.validate_fraction` of every
modality's train rows (the same instance ids across modalities where every modality has ids) is
held back before training: the run never trains on them (neither pairs nor cycles), and every N
steps mean mAP over the default route of every ordered pair of modalities is computed on them and
written as `val/mAP` (plus `val/mAP/<query>-><gallery>`), with the best so far (`val/best_mAP`,
`val/best_step`). By itself it monitors; with `train.keep_best = True` the run ends with the params
of the best validated step (early stopping without stopping: they are what the run returns and what
its last checkpoint holds; the optimizer state stays the last step's). The test split is never
touched. Cost: one translation of the held-back rows per route and an [n, n] similarity per route.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Mapping
import numpy as np
from graphbridge.core import errors
from graphbridge.data import dataset as dataset_lib
from graphbridge.evaluation import aligners as aligners_lib
from graphbridge.evaluation import retrieval as retrieval_lib


def hold_out(
  dataset: dataset_lib.Dataset, fraction: float, seed: int = 0
) -> tuple[dataset_lib.Dataset, dataset_lib.Dataset]:
  """(train view, validation view) of `dataset`: the train view has the held-back rows removed from
  its train masks; the validation view has them as its *test* rows (so evaluation code reads them
  with split="test"). Arrays are shared, not copied."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"train.validate_fraction must be in (0, 1), got {fraction}")
  rng = np.random.default_rng(seed)
  mods = dataset.modalities
  held: dict[str, np.ndarray] = {}
  if all(m.ids is not None for m in mods.values()):  # instance data: the same ids everywhere
    ids = np.unique(np.concatenate([m.ids[m.train] for m in mods.values()]))
    chosen = rng.choice(ids, size=max(1, int(round(fraction * len(ids)))), replace=False)
    for name, m in mods.items():
      held[name] = m.train & np.isin(m.ids, chosen)
  else:
    for name, m in mods.items():
      rows = np.nonzero(m.train)[0]
      pick = rng.choice(rows, size=max(1, int(round(fraction * len(rows)))), replace=False)
      mask = np.zeros(len(m), bool)
      mask[pick] = True
      held[name] = mask
  train_mods, val_mods = {}, {}
  for name, m in mods.items():
    if held[name].sum() >= m.train.sum():
      raise errors.DataError(
        f"validation hold-out would leave {name!r} with no train rows; lower "
        "train.validate_fraction"
      )
    t, v = copy.copy(m), copy.copy(m)
    t.train = m.train & ~held[name]
    v.test = held[name]
    train_mods[name], val_mods[name] = t, v
  train_view, val_view = copy.copy(dataset), copy.copy(dataset)
  train_view.modalities, val_view.modalities = train_mods, val_mods
  return train_view, val_view


@dataclasses.dataclass
class Validator:
  """Scores params on the held-back rows; remembers the best step."""

  layout: object
  dataset: dataset_lib.Dataset  # the validation view (held-back rows as test rows)
  compute_dtype: str = "float32"
  best_map: float = float("-inf")
  best_step: int = -1
  best_params: dict | None = None  # host copy of the best step's params (kept only with keep=True)
  keep: bool = False

  def score(self, step: int, params: Mapping) -> dict[str, float]:
    """{"val/mAP", "val/mAP/<q>-><g>"..., "val/best_mAP", "val/best_step"}; params: stacked, every
    edge."""
    import jax

    host = jax.device_get(dict(params))
    aligner = aligners_lib.GraphAligner(self.layout, host, self.compute_dtype, name="val")
    rows = retrieval_lib.retrieval_rows(aligner, self.dataset, split="test", ks=(1,))
    level = "instance" if any(r["level"] == "instance" for r in rows) else "class"
    rows = [r for r in rows if r["level"] == level]
    if not rows:
      return {}
    out = {f"val/mAP/{r['query']}->{r['gallery']}": float(r["mAP"]) for r in rows}
    mean = float(np.mean([r["mAP"] for r in rows]))
    if mean > self.best_map:
      self.best_map, self.best_step = mean, int(step)
      if self.keep:
        self.best_params = host
    return {
      "val/mAP": mean,
      **out,
      "val/best_mAP": self.best_map,
      "val/best_step": float(self.best_step),
    }
