"""What the pairs of a pair set join: instances or classes (the rule every `auto` default
reads), and which InfoNCE positives follow from it."""

from __future__ import annotations

from typing import Mapping
import numpy as np
from graphbridge.core.errors import DataError
from graphbridge.data.dataset import Dataset
from graphbridge.core.fields import CHOICES


def pair_label_agreement(dataset: Dataset, src: str, dst: str, pairs: np.ndarray) -> bool:
  """True if both modalities have labels and every pair joins rows of the same class."""
  a, b = dataset.modalities[src], dataset.modalities[dst]
  if a.labels is None or b.labels is None or len(pairs) == 0:
    return False
  return bool(np.all(a.labels[pairs[:, 0]] == b.labels[pairs[:, 1]]))


POSITIVES = CHOICES["loss.infonce_positives"]


def _within_class_structure(
  dataset: Dataset, src: str, dst: str, pairs: np.ndarray, max_pairs: int = 600, seed: int = 0
) -> tuple[float, float]:
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


def choose_positives(
  dataset: Dataset, src: str, dst: str, requested: str = "auto"
) -> tuple[str, str]:
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
    return (
      ("label", "asked for")
      if agree
      else ("pair", "asked for label, but pairs join different labels")
    )
  a, b = dataset.modalities[src], dataset.modalities[dst]
  if (
    a.ids is not None
    and b.ids is not None
    and len(pairs)
    and np.array_equal(a.ids[pairs[:, 0]], b.ids[pairs[:, 1]])
  ):
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


def class_level_pair_sets(dataset: Dataset) -> tuple[int, list[str]]:
  """(pair sets with train pairs, ["a<->b (why)" for each one whose pairs join classes, not
  instances]) by the rule of loss.infonce_positives="auto" (choose_positives), whatever the
  config forces: the test every data-reading default (pseudo.rounds, model.linear_rank,
  eval.routes, eval.querybank_k) applies."""
  pair_sets = [(a, b) for a, b in dataset.pairs if len(dataset.pairs_for(a, b))]
  out = []
  for a, b in pair_sets:
    choice, why = choose_positives(dataset, a, b, "auto")
    if choice != "pair":
      out.append(f"{a}<->{b} ({why})")
  return len(pair_sets), out
