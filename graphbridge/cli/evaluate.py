"""graphbridge-evaluate / launch/evaluate.py: report on a trained run (retrieval, modality gap,
silhouette, reconstruction, plots) without training again.

  python launch/evaluate.py --workdir=/tmp/gb [--data=FILE.npz] [--paths='image->text->audio,...']
                            [--split=test] [--out=DIR] [--step=N] [--noplots]

What the report measures: docs/evaluation.md. The run's config fields: docs/config.md.
"""

from absl import flags, logging
from graphbridge.runs import evaluate as evaluate_run
from graphbridge.cli import common

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A trained run's directory (checkpoints/, metrics.jsonl)."
)
_DATA = flags.DEFINE_string(
  "data",
  None,
  "Evaluate on this .npz / folder of .npy instead of the run's own "
  "data (same modalities and dims).",
)
_PATHS = flags.DEFINE_list(
  "paths", [], "Extra named routes to score, e.g. image->text->audio,audio->text->image."
)
_SPLIT = flags.DEFINE_enum(
  "split", None, ["test", "train", "all"], "Rows to evaluate (default: the run's eval.split)."
)
_OUT = flags.DEFINE_string(
  "out", None, "Where to write report.{json,md} and the PNGs (default: --workdir)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest complete one).")
_PLOTS = flags.DEFINE_bool("plots", True, "Write the PNG plots (needs matplotlib).")
_DPI = flags.DEFINE_integer(
  "plot_dpi", None, "PNG resolution (default: the run's eval.plot_dpi, 120)."
)
_FORMATS = flags.DEFINE_list(
  "plot_formats", None, "Figure formats, e.g. png,pdf or png,svg (PNG always)."
)


def _run():
  common.run_main(
    "graphbridge-evaluate",
    evaluate_run.evaluate_workdir,
    _WORKDIR.value,
    data=_DATA.value,
    paths=_PATHS.value,
    split=_SPLIT.value,
    out=_OUT.value,
    step=_STEP.value,
    plots=_PLOTS.value,
    plot_dpi=_DPI.value,
    plot_formats=_FORMATS.value,
  )


def main():
  common.main(
    "graphbridge-evaluate",
    __name__,
    __doc__,
    _run,
    required=("workdir",),
    config_flag=None,
    verbosity=logging.ERROR,
  )


if __name__ == "__main__":
  main()
