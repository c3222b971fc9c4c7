"""The objective interface: what the train step and loop need from a loss.

`train.Setup.plan` holds one `Objective`. Two implement it today: the translator graph's
`objectives.LossPlan` (per-edge cosine + InfoNCE, cycles) and `cmcr.CMCRObjective`; a strategy
supplies its own through `strategies.Stage.objective`, a builder
`objective(layout, dataset, config) -> Objective`. Nothing else in training looks at the
objective, so a new loss is one class (docs/extending.md).

Weights are arrays in the train state (`state["weights"]`), so changing them between phases
never recompiles; their pytree structure must stay the same for the whole run.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable
import jax
import numpy as np


PyTree = Any


@runtime_checkable
class Objective(Protocol):
  """The contract between an objective and `train` (step, loop, checkpoints, metrics)."""

  def term_names(self) -> dict[str, list[str]]:
    """{term kind: [name of each entry]}; loss() returns aux["terms"][kind] as an array [len(names)]
    in this order (metrics "loss/<kind>/<name>", and the NaN guard names the culprit)."""

  def describe(self) -> str:
    """One line for the log and the dry run."""

  def initial_weights(self) -> dict[str, jax.Array]:
    """{weight name: float32 array} at step 0 (held in the train state, passed to loss())."""

  def initial_globals(self) -> dict[str, jax.Array]:
    """Trainable parameters that belong to no edge (e.g. a learnt temperature); {} if none."""

  def sampler_arrays(self, dataset, infonce_positives: str = "label") -> dict[str, np.ndarray]:
    """Numpy arrays the sampler draws batches from (put on device once, or read on the host)."""

  def sample(self, arrays: Mapping[str, jax.Array], key: jax.Array, batch_size: int) -> dict:
    """A batch drawn from `arrays` with `key` (traceable: runs inside the jitted step)."""

  def loss(
    self,
    params: Mapping[str, PyTree],
    frozen: Mapping[str, PyTree],
    batch: Mapping,
    weights: Mapping[str, jax.Array],
    key: jax.Array,
    dtype,
  ) -> tuple[jax.Array, dict]:
    """(total scalar, aux) with aux["terms"] = {kind: [n_kind]} per term_names(); optional aux
    entries: "cycle_by_length" [max_len - 1], "inv_temperature" scalar.

    params: {"edges": {bucket: stacked}, "globals": {...}} (trainable);
    frozen: {bucket: stacked}."""


def finetune_weights(objective, weights: Mapping[str, jax.Array], finetune) -> dict[str, jax.Array]:
  """The weights of the contrastive fine-tuning phase (config.finetune, after train.steps).

  An objective may define `finetune_weights(weights, finetune) -> weights`; without it the weights
  stay as they are. Every key of `weights` is kept (a weight the hook does not know passes
  through unchanged), and the structure must not change: the step is compiled once."""
  hook = getattr(objective, "finetune_weights", None)
  if hook is None:
    return dict(weights)
  tuned = {**weights, **hook(weights, finetune)}
  if set(tuned) != set(weights):
    raise ValueError(
      f"{type(objective).__name__}.finetune_weights added weights "
      f"{sorted(set(tuned) - set(weights))}; fine-tuning may change values only"
    )
  return tuned
