"""The neighbourhood-structure regulariser: known answers and its place in the plan."""

import jax.numpy as jnp
import numpy as np

from graphbridge import defaults
from graphbridge.model import losses as losses_lib
from graphbridge.training import setup as setup_lib
from graphbridge.training import trainer as trainer_lib
from tests.test_report_any_graph import multiview


def test_structure_loss_is_zero_for_a_rotation_and_positive_for_scrambled_rows():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 10))
  rot, _ = np.linalg.qr(rng.normal(size=(10, 10)))
  same = float(losses_lib.structure_loss(jnp.asarray(x), jnp.asarray(x @ rot), 0.1))
  assert abs(same) < 1e-4
  scrambled = float(
    losses_lib.structure_loss(jnp.asarray(x), jnp.asarray(rng.normal(size=(32, 6))), 0.1)
  )
  assert scrambled > 0.5
  # a map that keeps each row's neighbours but not their exact similarities costs little
  near = float(
    losses_lib.structure_loss(
      jnp.asarray(x), jnp.asarray(x @ rot + 0.05 * rng.normal(size=x.shape)), 0.1
    )
  )
  assert 0 < near < scrambled / 10


def test_structure_term_is_planned_trained_and_lowered():
  dataset = multiview((8, 12, 6), ((0, 1), (1, 2)), n=200, per_edge=30)
  config = defaults.shrink_for_tests(defaults.base_config())
  assert (
    "structure" not in setup_lib.build_setup(config, dataset).plan.term_names()
  )  # off by default
  config.train.tensorboard = False
  config.train.steps = 60
  config.train.log_every = config.train.print_every = 5
  config.loss.structure = 1.0
  lines = []
  result = trainer_lib.train(config, None, dataset=dataset, log=lines.append)
  names = result.setup.plan.term_names()["structure"]
  assert sorted(names) == sorted(["m0->m1", "m1->m0", "m1->m2", "m2->m1"])
  values = [
    float(line.split("  structure ")[1].split()[0]) for line in lines if "  structure " in line
  ]
  assert len(values) == 12 and np.isfinite(values).all()
  assert np.mean(values[-3:]) < np.mean(values[:3])  # trained down
