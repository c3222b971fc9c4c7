"""graphbridge-graft / launch/graft.py: add a modality to a trained graph, training only its edges.

python launch/graft.py --from_workdir=/tmp/gb_base --config=configs/graft_audio.py
--workdir=/tmp/gb_graft
python launch/graft.py --base --config=configs/graft_audio.py --workdir=/tmp/gb_base   # the graph
without it

Every config field (--config.<field>=VALUE), the graft block included: docs/config.md. How grafting
works: docs/grafting.md.
"""

from absl import app, flags, logging
from ml_collections import config_flags
from graphbridge.runs import graft as graft_run
from graphbridge.cli import common

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Graft config: a packaged name (graft_audio, "
  "graft_audio:tiny) or a file (configs/graft_audio.py); every field: docs/config.md.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "New directory for the grafted run's checkpoints, metrics and "
  "report (with --base: the base run's directory).",
)
_FROM = flags.DEFINE_string(
  "from_workdir", None, "The trained run to graft onto; only read, never written."
)
_BASE = flags.DEFINE_bool(
  "base",
  False,
  "Instead of grafting, train the graph without graft.modality "
  "(the data restricted to graft_run.base_modalities).",
)
_PLOTS = flags.DEFINE_bool("plots", True, "Write the report's PNG plots (needs matplotlib).")


def _run():
  if _BASE.value == bool(_FROM.value):
    raise app.UsageError(
      "give --from_workdir=OLD to graft, or --base to train the graph without the new "
      "modality (not both)"
    )
  if _BASE.value:
    common.run_main(
      "graft", graft_run.train_base, _CONFIG.value, _WORKDIR.value, plots=_PLOTS.value
    )
  else:
    common.run_main(
      "graft", graft_run.graft, _CONFIG.value, _FROM.value, _WORKDIR.value, plots=_PLOTS.value
    )


def main():
  common.main(
    "graphbridge-graft",
    __name__,
    __doc__,
    _run,
    required=("config", "workdir"),
    config_flag="config",
    verbosity=logging.ERROR,
  )


if __name__ == "__main__":
  main()
