"""bfloat16 matmuls (params and Adam state in float32): training converges on the digits data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from graphbridge.data import readers as readers_lib
from graphbridge.evaluation import aligners as aligners_lib
from graphbridge.evaluation import retrieval as retrieval_lib
from graphbridge.training import trainer as trainer_lib
from tests.conftest import load_config_module


def _digits_config(dtype: str, steps: int = 150):
  c = load_config_module("configs/digits.py").get_config()
  c.model.hidden = (64,)
  c.data.batch_size = 64
  c.train.steps = steps
  c.train.log_every = 50
  c.train.checkpoint_every = 0
  c.model.compute_dtype = dtype
  return c


@pytest.fixture(scope="module")
def digits():
  return readers_lib.load_digits()


def _zero_shot_map(result, dataset):
  aligner = aligners_lib.GraphAligner(
    result.setup.layout, result.params, result.setup.compute_dtype
  )
  rows = retrieval_lib.retrieval_rows(
    aligner, dataset, pairs=[("image", "audio"), ("audio", "image")]
  )
  return {(r["query"], r["gallery"]): r["mAP"] for r in rows}, rows[0]["chance_mAP"]


def test_bfloat16_training_converges_on_digits_like_float32(digits):
  runs = {}
  for dtype in ("float32", "bfloat16"):
    logs = []
    result = trainer_lib.train(_digits_config(dtype), None, dataset=digits, log=logs.append)
    runs[dtype] = result
    losses = [float(line.split("loss ")[1].split()[0]) for line in logs if line.startswith("step ")]
    assert losses[-1] < 0.8 * losses[0], (dtype, losses)  # the loss falls
  low = runs["bfloat16"]
  # master weights and optimizer stay float32; the step keeps a bfloat16 copy for the matmuls
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(low.state["params"]))
  assert all(
    x.dtype == jnp.float32
    for x in jax.tree.leaves(low.state["opt"])
    if jnp.issubdtype(x.dtype, jnp.floating)
  )
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(low.state["compute_params"]))
  high_map, chance = _zero_shot_map(runs["float32"], digits)
  low_map, _ = _zero_shot_map(low, digits)
  for pair, value in low_map.items():  # zero-shot image<->audio through text, never paired
    assert value > chance + 0.5, (pair, value, chance)
    assert abs(value - high_map[pair]) < 0.05, (pair, value, high_map[pair])


def test_bfloat16_resume_is_bit_identical(tri_modal_dataset, tmp_path):
  """The bfloat16 copy is derived from the float32 weights, never saved: resuming recomputes it."""

  def config(steps):
    c = load_config_module("configs/digits.py").get_config("tiny")
    c.model.compute_dtype = "bfloat16"
    c.train.steps = steps
    c.train.checkpoint_every = 10
    c.optim.warmup_steps = 0
    c.optim.final_lr_fraction = 1.0  # a schedule that does not depend on train.steps
    return c

  quiet = lambda _: None
  whole = trainer_lib.train(
    config(20), str(tmp_path / "whole"), dataset=tri_modal_dataset, log=quiet
  )
  trainer_lib.train(config(10), str(tmp_path / "split"), dataset=tri_modal_dataset, log=quiet)
  resumed = trainer_lib.train(
    config(20), str(tmp_path / "split"), dataset=tri_modal_dataset, log=quiet
  )
  assert resumed.steps_run == 10
  for a, b in zip(
    jax.tree.leaves(jax.device_get(whole.state["params"])),
    jax.tree.leaves(jax.device_get(resumed.state["params"])),
  ):
    np.testing.assert_array_equal(a, b)
