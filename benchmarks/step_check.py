"""Accuracy of each step variant against a float32 reference, on the default device.

For the step_bench workload (synthetic instance-aligned data, complete graph, cycles 2..L):
  * loss and gradient at step 0 on one batch: relative error |l - l_ref| / |l_ref| and
    ||g - g_ref|| / ||g_ref|| (all trainable leaves together; worst leaf also printed);
  * after --steps full optimizer steps (same batches): ||dp - dp_ref|| / ||dp_ref|| where dp is the
    change of the float32 master params, i.e. the error relative to the size of the updates.
The reference is compute_dtype float32, model.impl flax, f32 Adam. "bf16:base" is the library's
bf16 default, so each bf16 variant can be judged against the error bf16 already has.

  python benchmarks/step_check.py --modalities=3 --dim=256 --hidden=512 --batch=128 \\
      --checks=bf16:base,bf16:fused,bf16:fused+mu_bf16 --check_steps=5 --json_out=check.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import step_bench  # noqa: E402  (its flags: --modalities --dim --hidden --batch ...)
from graphbridge.training import setup as setup_lib
from graphbridge.training import state as state_lib
from graphbridge.training import step as step_lib
from graphbridge.training import optimizer as optimizer_lib
from graphbridge.model.translators import dtype_from_name

flags.DEFINE_integer("check_steps", 5, "optimizer steps for the update comparison")
flags.DEFINE_list(
  "checks",
  ["bf16:base", "bf16:fused", "bf16:fused+mu_bf16"],
  "dtype:variant pairs (variant as step_bench --variants)",
)
FLAGS = flags.FLAGS


def _rel(a, b) -> float:
  import numpy as np

  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _tree_rel(tree, ref) -> tuple[float, float]:
  """(relative error of all leaves together, worst single leaf)."""
  import jax
  import numpy as np

  leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(jax.device_get(tree))]
  refs = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(jax.device_get(ref))]
  total = _rel(np.concatenate(leaves), np.concatenate(refs))
  worst = max(_rel(a, b) for a, b in zip(leaves, refs))
  return total, worst


def evaluate(
  dtype: str,
  variant: str,
  modalities: int,
  dim: int,
  hidden: int,
  batch: int,
  cycle_length: int,
  steps: int,
) -> dict:
  """Loss, gradient and update of one (dtype, variant), float32 master values (host numpy)."""
  import jax
  import jax.numpy as jnp

  bench_config, synthetic_dataset = step_bench.bench_config, step_bench.synthetic_dataset
  dataset = synthetic_dataset(modalities, dim, rows=max(4 * batch, 256))
  config = bench_config(modalities, dim, hidden, batch, cycle_length, dtype, True, variant)
  config.optim.lr = 1e-3
  setup = setup_lib.build_setup(config, dataset)
  tx = optimizer_lib.make_optimizer(config)
  state = state_lib.init_state(setup, tx, 0, optimizer_lib.phase_weights(config, setup.plan, 0))
  arrays = jax.device_put(step_lib.sampler_arrays(setup, dataset))
  batch_ = setup.plan.sample(arrays, jax.random.PRNGKey(1), setup.batch_size)
  compute = dtype_from_name(setup.compute_dtype)

  @jax.jit
  def loss_and_grad(params, batch_):
    f = lambda p: setup.plan.loss(p, {}, batch_, state["weights"], jax.random.PRNGKey(0), compute)[
      0
    ]
    p = {**params, "edges": state_lib.to_compute_dtype(setup, params["edges"])}
    loss, grads = jax.value_and_grad(f)(p)
    return loss, jax.tree.map(lambda g: g.astype(jnp.float32), grads["edges"])

  t = time.perf_counter()
  loss, grads = jax.device_get(loss_and_grad(state["params"], batch_))
  p0 = jax.device_get(state["params"]["edges"])
  step = step_lib.make_device_step(setup, tx, skip_nonfinite=True)
  for _ in range(steps):
    state, metrics = step(state, {}, arrays)
  p_end = jax.device_get(state["params"]["edges"])
  update = jax.tree.map(lambda a, b: a - b, p_end, p0)
  return {
    "loss": float(loss),
    "grads": grads,
    "update": update,
    "loss_end": float(metrics["loss/total"]),
    "seconds": time.perf_counter() - t,
  }


def main(argv):
  del argv
  import jax

  print(
    f"step_check on {jax.devices()[0].device_kind}: M={FLAGS.modalities} d={FLAGS.dim} "
    f"h={FLAGS.hidden} B={FLAGS.batch} L={FLAGS.cycle_length}, {FLAGS.check_steps} steps",
    flush=True,
  )
  dims = (
    FLAGS.modalities,
    FLAGS.dim,
    FLAGS.hidden,
    FLAGS.batch,
    FLAGS.cycle_length,
    FLAGS.check_steps,
  )
  ref = evaluate("float32", "base", *dims)
  print(
    f"step_check reference float32:base loss {ref['loss']:.6f} "
    f"loss after {FLAGS.check_steps} steps "
    f"{ref['loss_end']:.6f} ({ref['seconds']:.1f} s)",
    flush=True,
  )
  failures = 0
  for item in FLAGS.checks:
    dtype_short, _, variant = item.partition(":")
    dtype = {"bf16": "bfloat16", "f32": "float32"}.get(dtype_short, dtype_short)
    try:
      out = evaluate(dtype, variant or "base", *dims)
    except Exception as exc:
      failures += 1
      print(f"step_check {item}: FAILED {type(exc).__name__}: {str(exc)[:500]}", flush=True)
      continue
    grad_rel, grad_worst = _tree_rel(out["grads"], ref["grads"])
    upd_rel, upd_worst = _tree_rel(out["update"], ref["update"])
    row = {
      "check": item,
      "device": jax.devices()[0].device_kind,
      "dims": dims,
      "loss_rel": abs(out["loss"] - ref["loss"]) / abs(ref["loss"]),
      "grad_rel": grad_rel,
      "grad_rel_worst_leaf": grad_worst,
      "update_rel": upd_rel,
      "update_rel_worst_leaf": upd_worst,
      "loss_end_rel": abs(out["loss_end"] - ref["loss_end"]) / abs(ref["loss_end"]),
      "seconds": out["seconds"],
    }
    print(
      f"step_check {item}: loss rel err {row['loss_rel']:.2e}, grad rel err {grad_rel:.2e} "
      f"(worst leaf {grad_worst:.2e}), "
      f"update rel err after {FLAGS.check_steps} steps {upd_rel:.2e} "
      f"(worst leaf {upd_worst:.2e}), loss after steps rel err {row['loss_end_rel']:.2e} "
      f"({out['seconds']:.1f} s)",
      flush=True,
    )
    if FLAGS.json_out:
      with open(FLAGS.json_out, "a") as f:
        f.write(json.dumps(row) + "\n")
  if failures:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
