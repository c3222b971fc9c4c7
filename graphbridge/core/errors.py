"""Every error a user can act on, in one leaf module (each message says what to change)."""

from __future__ import annotations


class GraphError(ValueError):
  """A request that does not fit the graph (unknown modality, missing edge, bad path)."""


class ConfigError(ValueError):
  """The config asks for something that does not exist; the message lists the valid choices."""


class ConfigNotFoundError(ValueError):
  """Neither a file nor a packaged config of that name."""


class DataError(ValueError):
  """The data cannot be used as given; the message names the array and row."""


class CheckpointError(RuntimeError):
  """A checkpoint is missing, incomplete, corrupt, or belongs to another graph."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoints were written for another graph or architecture: no step of them is usable,
  so this is never a reason to fall back to an older step."""


class CheckpointCorruptError(CheckpointError):
  """An item's files differ from the checksum recorded when the step was saved (or cannot be read).
  `step` and `item` name it; an older verified step is a valid fallback."""

  def __init__(self, message: str, step: int | None = None, item: str | None = None):
    super().__init__(message)
    self.step, self.item = step, item


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (e.g. the disk is full); the steps saved before are
  intact."""


class MeshError(ValueError):
  """The mesh asked for does not fit the devices or the batch; the message says what to change."""


class WorkdirLockedError(RuntimeError):
  """Another process holds the workdir (the message names it)."""


class WorkdirError(ValueError):
  """The workdir cannot be used as given (empty, a file, a lock file that is a directory); the
  message says what to change."""


class DeviceMemoryError(RuntimeError):
  """A step needs more device memory than there is (XLA's RESOURCE_EXHAUSTED); the message says
  which config values to lower."""


class NonFiniteError(FloatingPointError):
  """A loss term or gradient became NaN/inf; the message names the term and edge."""


class RunMismatchError(CheckpointMismatchError):
  """Resuming would silently change the run in the workdir (config, loss plan or data differ from
  what its checkpoints were trained with); the message lists the differences."""


class GraftError(ValueError):
  """The graft cannot be done as asked; nothing has been written. The message says what to
  change."""


class RunInterrupted(KeyboardInterrupt):
  """Training stopped at a step boundary on Ctrl-C (SIGINT). A KeyboardInterrupt, so code that
  catches Exception does not swallow it; the message says where it stopped and how to resume."""

  def __init__(self, step: int, total: int, saved: int | None):
    self.step, self.total, self.saved = step, total, saved
    where = f"interrupted after step {step} of {total}"
    if saved is None:
      resume = "no checkpoint is written without a workdir"
    elif saved == 0:
      resume = "no checkpoint written yet: the same command starts again"
    else:
      resume = f"the last checkpoint is step {saved}: the same command resumes from it"
    super().__init__(f"{where}; {resume}")
