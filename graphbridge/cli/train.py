"""graphbridge-train / launch/train.py: train, evaluate and report.

  python launch/train.py --config=configs/digits.py --workdir=/tmp/gb [--config.train.steps=1000]
  srun python launch/train.py --distributed --config=... --workdir=/shared/gb   # multi-host (docs/scaling.md)
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the report.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host: call jax.distributed.initialize() first (SLURM, TPU pods and Open MPI "
    "are detected; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). See docs/scaling.md.")


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DISTRIBUTED.value:  # before anything touches devices
    from graphbridge import sharding
    sharding.initialize_distributed()
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from graphbridge import experiment
  experiment.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def main():
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_main)


if __name__ == "__main__":
  main()
