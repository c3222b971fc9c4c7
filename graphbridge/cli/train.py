"""graphbridge-train / launch/train.py: train, evaluate and report.

graphbridge-train --config=digits --workdir=/tmp/gb [--config.train.steps=1000] [--noplots]
graphbridge-train --config=digits:tiny --workdir=/tmp/gb --dry_run   # check config, data, graph;
print the plan
python launch/train.py --config=configs/digits.py --workdir=/tmp/gb
srun python launch/train.py --distributed --config=... --workdir=/shared/gb   # multi-host
(docs/scaling.md)

Every config field (--config.<field>=VALUE), its default, meaning and choices: docs/config.md.
"""

from absl import flags
from ml_collections import config_flags
from graphbridge.runs import dry_run
from graphbridge.runs import experiment
from graphbridge.cli import common
from graphbridge.training import sharding as sharding_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config: a packaged name (digits, "
  "digits:tiny, npz, compare) or a file (configs/*.py[:variant]); "
  "override any field with --config.<field>=VALUE (every field: docs/config.md).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and the report."
)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run",
  False,
  "Check config, data and graph, print the resolved config "
  "and the loss plan, then exit (nothing trained or written).",
)
_PLOTS = flags.DEFINE_bool(
  "plots", True, "Write the report's plots (needs matplotlib); --noplots to skip."
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Multi-host: call jax.distributed.initialize() first (SLURM, TPU pods and Open MPI "
  "are detected; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). "
  "See docs/scaling.md.",
)


def _run():
  if _DISTRIBUTED.value:  # before anything touches devices
    sharding_lib.initialize_distributed()
  if _DRY_RUN.value:
    common.run_main("graphbridge-train", dry_run.dry_run, _CONFIG.value, _WORKDIR.value)
    return
  common.run_main(
    "graphbridge-train",
    experiment.train_and_evaluate,
    _CONFIG.value,
    _WORKDIR.value,
    plots=_PLOTS.value,
  )


def main():
  common.main("graphbridge-train", __name__, __doc__, _run)


if __name__ == "__main__":
  main()
