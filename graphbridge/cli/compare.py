"""graphbridge-compare / launch/compare.py: every strategy on one data set, several seeds.

python launch/compare.py --config=configs/compare.py --workdir=/tmp/gb_compare
graphbridge-compare --config=compare --workdir=/tmp/gb_two --config.compare.strategies=graph,pivot

Every config field (--config.<field>=VALUE), the compare block included: docs/config.md. Which
strategy when: docs/strategies.md.
"""

from absl import flags, logging
from ml_collections import config_flags
from graphbridge.runs import compare as compare_run
from graphbridge.cli import common

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config: a packaged name (compare, compare:tiny) or a file (configs/compare.py); "
  "every field: docs/config.md.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for per-run checkpoints and compare.{md,json,png}."
)


def _run():
  common.run_main("graphbridge-compare", compare_run.compare, _CONFIG.value, _WORKDIR.value)


def main():
  common.main(
    "graphbridge-compare",
    __name__,
    __doc__,
    _run,
    required=("config", "workdir"),
    config_flag="config",
    verbosity=logging.WARNING,
  )


if __name__ == "__main__":
  main()
