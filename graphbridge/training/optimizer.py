"""Optimizer, learning-rate schedule and loss-weight phases."""

from __future__ import annotations

from typing import Any, Callable
import jax
import optax
from graphbridge.core.errors import ConfigError
from graphbridge.model import objective as objective_lib
from graphbridge.model import objectives as objectives_lib
from graphbridge.model.translators import dtype_from_name
from graphbridge.model import objectives
from graphbridge.core.fields import CHOICES


def total_steps(config) -> int:
  return int(config.train.steps) + int(config.finetune.steps)


def learning_rate_schedule(config) -> optax.Schedule:
  """step -> learning rate: warmup, cosine decay over train.steps, then finetune's constant."""
  opt = config.optim
  main = optax.warmup_cosine_decay_schedule(
    0.0,
    opt.lr,
    warmup_steps=min(int(opt.warmup_steps), max(int(config.train.steps) - 1, 1)),
    decay_steps=max(int(config.train.steps), 2),
    end_value=opt.lr * opt.final_lr_fraction,
  )
  schedule = main
  if int(config.finetune.steps) > 0:
    schedule = optax.join_schedules(
      [main, optax.constant_schedule(opt.lr * config.finetune.lr_scale)], [int(config.train.steps)]
    )
  return schedule


# optim.name -> optax optimizer of (schedule, optim config, first-moment dtype or None); the choices
# of optim.name
OPTIMIZERS: dict[str, Callable[[optax.Schedule, Any, Any], optax.GradientTransformation]] = {
  "adam": lambda schedule, opt, mu_dtype: optax.adam(
    schedule, b1=opt.b1, b2=opt.b2, mu_dtype=mu_dtype
  ),
  "adamw": lambda schedule, opt, mu_dtype: optax.adamw(
    schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mu_dtype=mu_dtype
  ),
  "sgd": lambda schedule, opt, mu_dtype: optax.sgd(schedule, momentum=0.9),
}


MU_DTYPES = CHOICES["optim.mu_dtype"]  # "" = the params' dtype


def make_optimizer(config) -> optax.GradientTransformation:
  opt = config.optim
  schedule = learning_rate_schedule(config)
  mu_name = opt.mu_dtype
  if mu_name not in MU_DTYPES:
    raise ConfigError(f"optim.mu_dtype={mu_name!r}: choose '', 'float32' or 'bfloat16'")
  mu_dtype = dtype_from_name(mu_name) if mu_name else None
  if opt.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name={opt.name!r}: choose one of {', '.join(OPTIMIZERS)}")
  parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip and opt.grad_clip > 0 else []
  return optax.chain(*parts, OPTIMIZERS[opt.name](schedule, opt, mu_dtype))


def phase_weights(config, objective, step: int) -> dict[str, jax.Array]:
  """Loss weights for `step`: the objective's initial weights, then (from train.steps on, when
  finetune.steps > 0) its fine-tuning weights (objective_lib.finetune_weights: every key kept).

  objective: an objective_lib.Objective, or objectives_lib.LossSettings (the graph plan's
  weights)."""
  if isinstance(objective, objectives_lib.LossSettings):
    weights, hook_owner = objectives_lib.initial_weights(objective), objectives
  else:
    weights, hook_owner = objective.initial_weights(), objective
  if int(config.finetune.steps) > 0 and step >= int(config.train.steps):
    weights = objective_lib.finetune_weights(hook_owner, weights, config.finetune)
  return weights
