"""graphbridge-compare / launch/compare.py: every strategy on one data set, several seeds.

python launch/compare.py --config=configs/compare.py --workdir=/tmp/gb_compare
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags
from graphbridge.runs import compare as compare_run
from graphbridge.cli import common

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config: a packaged name (compare, compare:tiny) or a file (configs/compare.py).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for per-run checkpoints and compare.{md,json,png}."
)


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  common.run_main("graphbridge-compare", compare_run.compare, _CONFIG.value, _WORKDIR.value)


def main():
  sys.argv = common.prepare_argv(sys.argv, "graphbridge-compare", __name__, __doc__)
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(_main)


if __name__ == "__main__":
  main()
