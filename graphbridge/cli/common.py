"""What every console script does before absl parses its flags.

- `--config=digits[:tiny]`: a bare name resolves to the packaged config (configs_resolver).
- `--config.train.stpes=5`: one line naming the field and the closest match, exit status 2
  (instead of config_flags' chained tracebacks).
- `--help`: the script's own flags (absl would list only the flags of `__main__`, which for a
  console script is a wrapper that defines none).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Callable, Sequence

from absl import app, flags
from absl import logging as logging_absl

from graphbridge.runs.configs import unknown_field_message
from graphbridge.core import errors
from graphbridge.core.errors import GraphError
from graphbridge.training import compile_cache as compile_cache_lib
from graphbridge.training.checkpoint import _disk_error
from graphbridge.runs import configs as configs_lib

USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C

_COMPILE_CACHE = flags.DEFINE_string(
  "compile_cache",
  None,
  "folder of JAX's persistent compilation cache (a rerun of the same shapes reads its programs "
  "instead of compiling them), or 'off'; default $GRAPHBRIDGE_COMPILE_CACHE, else "
  "~/.cache/graphbridge/jax",
)


def fail(prog: str, message: str, hint: str | None = None) -> None:
  """One line on stderr (and a hint), exit status 2 (a usage error)."""
  print(f"{prog}: {message}" + (f"\nhint: {hint}" if hint else ""), file=sys.stderr)
  sys.exit(USAGE_ERROR)


def _user_errors() -> list[tuple[type, str]]:
  """(error class, hint) for errors a user caused and can fix, most specific first."""
  return [
    (errors.RunMismatchError, "docs/reliability.md lists the changes a resume accepts"),
    (
      errors.CheckpointWriteError,
      "free space (or fix permissions) and run the same command again: it "
      "resumes from the last saved step",
    ),
    (
      errors.CheckpointCorruptError,
      "an older verified step is used when none is named; evaluate --step=N "
      "picks one; the damaged files are kept for inspection",
    ),
    (errors.CheckpointError, "check --workdir / --from_workdir (docs/reliability.md)"),
    (errors.WorkdirLockedError, "one run per workdir: train, graft and evaluate lock it"),
    (errors.WorkdirError, "--workdir names the run's directory (created if missing)"),
    (errors.DeviceMemoryError, "lower --config.data.batch_size (or --config.model.hidden)"),
    (
      errors.ConfigError,
      "docs/config.md lists every field; --dry_run checks a config without training",
    ),
    (errors.GraftError, "docs/grafting.md"),
    (
      GraphError,
      "graph nodes must be modalities of the data (or graph.virtual_nodes), edges 'src->dst'",
    ),
    (errors.DataError, "the data format is described in docs/data.md"),
    (
      errors.NonFiniteError,
      "lower --config.optim.lr or set --config.optim.grad_clip; the same command "
      "resumes from the last good checkpoint",
    ),
  ]


class _DropBackgroundErrors(logging.Filter):
  """Orbax logs every failed background write (one per array, with tracebacks) at ERROR; the
  error that matters reaches the caller as CheckpointWriteError. GRAPHBRIDGE_DEBUG=1 keeps them."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in (record.pathname or ""))


def _quiet_background_errors() -> None:
  """Silence the echoes of a failed async checkpoint write: Orbax's ERROR records and the
  'Event loop is closed' tracebacks of tensorstore callbacks arriving after its loop closed."""
  if os.environ.get("GRAPHBRIDGE_DEBUG"):
    return
  for name in ("absl", ""):
    logging.getLogger(name).addFilter(_DropBackgroundErrors())
  for handler in logging.getLogger("absl").handlers + logging.getLogger().handlers:
    handler.addFilter(_DropBackgroundErrors())
  previous = sys.excepthook

  def hook(kind, value, tb):
    if isinstance(value, RuntimeError) and "Event loop is closed" in str(value):
      return
    previous(kind, value, tb)

  sys.excepthook = hook
  previous_unraisable = sys.unraisablehook

  def unraisable(info):
    if isinstance(info.exc_value, RuntimeError) and "Event loop is closed" in str(info.exc_value):
      return
    previous_unraisable(info)

  sys.unraisablehook = unraisable


def run_main(prog: str, fn, *args, **kwargs):
  """fn(*args, **kwargs); an error the user caused (bad data, config, graph, checkpoint, lock, full
  disk) prints its message and a hint and exits 2; any other error keeps its traceback."""
  _quiet_background_errors()
  try:
    return fn(*args, **kwargs)
  except KeyboardInterrupt as exc:  # Ctrl-C: never swallowed, never a traceback
    message = str(exc) if isinstance(exc, errors.RunInterrupted) else "interrupted (Ctrl-C)"
    print(f"{prog}: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # at once: a background checkpoint write still running (bounded wait done) must not hold the
    # process at exit; the steps saved before are intact
    os._exit(INTERRUPTED)
  except Exception as exc:  # noqa: BLE001  (re-raised unless it is the user's to fix)
    for cls, hint in _user_errors():
      if isinstance(exc, cls):
        print(f"{prog}: {exc}\nhint: {hint}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    disk = _disk_error(exc)
    if disk is not None:
      print(
        f"{prog}: cannot write {disk.filename or ''}: {disk.strerror}\nhint: free space or fix "
        "permissions and run the same command again (it resumes from the last saved step)",
        file=sys.stderr,
      )
      sys.exit(USAGE_ERROR)
    raise


def _flag_value(argv: Sequence[str], i: int, name: str) -> tuple[str | None, int]:
  """(value, how many argv entries it used) if argv[i] is --name=V or --name V."""
  arg = argv[i]
  if arg.startswith(f"--{name}="):
    return arg.split("=", 1)[1], 1
  if arg == f"--{name}" and i + 1 < len(argv):
    return argv[i + 1], 2
  return None, 0


def print_help(prog: str, module_name: str, doc: str | None) -> None:
  print((doc or "").strip() + "\n")
  print(f"flags of {prog}:")
  print(flags.FLAGS.module_help(module_name) or "  (none)")
  print(flags.FLAGS.module_help(__name__))
  print("\nevery config field, its default and choices: docs/config.md")
  print("\nabsl's own flags (verbosity, logging): --helpfull")


def prepare_argv(
  argv: Sequence[str],
  prog: str,
  module_name: str,
  doc: str | None,
  config_flag: str | None = "config",
) -> list[str]:
  """argv with `--config` resolved to a file; handles --help and config typos (exits)."""
  argv = list(argv)
  if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
    try:
      print_help(prog, module_name, doc)
      sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (`--help | head`): not an error
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  if config_flag is None:
    return argv
  config_value = None
  for i in range(1, len(argv)):
    value, used = _flag_value(argv, i, config_flag)
    if used:
      try:
        resolved = configs_lib.resolve_flag_value(value)
      except errors.ConfigNotFoundError as exc:
        fail(prog, str(exc))
      argv[i + used - 1] = resolved if used == 2 else f"--{config_flag}={resolved}"
      config_value = resolved
      break
  if config_value is None:
    return argv
  overrides = [
    a[len(f"--{config_flag}.") :].split("=", 1)[0]
    for a in argv[1:]
    if a.startswith(f"--{config_flag}.")
  ]
  try:
    config = configs_lib.load(config_value)
  except ValueError as exc:  # e.g. an unknown variant
    fail(prog, str(exc))
  for key in overrides:
    message = unknown_field_message(config, key)
    if message:
      fail(prog, f"--{config_flag}.{key}: {message}")
  return argv


def main(
  prog: str,
  module_name: str,
  doc: str | None,
  run: Callable[[], object],
  required: Sequence[str] = ("config", "workdir"),
  config_flag: str | None = "config",
  verbosity: int = logging_absl.WARNING,
) -> None:
  """The console script of every CLI: --config resolved, --help and typos answered (prepare_argv),
  the flags parsed by absl, no stray arguments, absl's verbosity set unless asked for (Orbax logs
  every save at INFO), then run() under run_main's error handling (a user's error: one line and a
  hint, exit 2)."""
  sys.argv = prepare_argv(sys.argv, prog, module_name, doc, config_flag=config_flag)
  flags.mark_flags_as_required(list(required))

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in required:  # --workdir= passes absl's check for a value, and would write nowhere
      value = flags.FLAGS[name].value
      if isinstance(value, str) and not value.strip():
        fail(prog, f"--{name} is empty: give it a value", "--help lists the flags")
    if not flags.FLAGS["verbosity"].present:
      logging_absl.set_verbosity(verbosity)
    compile_cache_lib.enable(_COMPILE_CACHE.value)
    run()

  def _parse(argv):  # absl's own parser logs FATAL and exits 1; a bad flag is a usage error
    try:
      return flags.FLAGS(argv)
    except flags.Error as exc:
      missing = re.match(
        r"flag --(\w+)=None: Flag --\w+ must have a value other than None", str(exc)
      )
      if missing:
        fail(prog, f"--{missing.group(1)} is required", "--help lists the flags")
      fail(prog, str(exc), "--help lists the flags")

  app.run(_main, flags_parser=_parse)
