"""One writer per workdir: an exclusive `fcntl.flock` on the workdir directory itself.

Training, grafting and an evaluation that writes its report into a workdir hold the lock for
their whole life. A second one refuses at once, naming the holder (pid, host, command, start
time, as written into <workdir>/.graphbridge.lock). The lock is on the directory, not on that file,
so deleting or replacing the file does not let a second run in (the file only names the holder).
The kernel drops a flock when its process dies, so a workdir left by a killed run is taken over at
once; its stale holder (still named in the file) is named in a note.

Within one process the lock is re-entrant (train_and_evaluate holds it, then train takes it
again). On multi-host runs only process 0 takes it. File systems that cannot flock a directory
lock the file instead (checking that the locked file is still the one at its path); those without
flock at all get a note and no lock.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Callable
from graphbridge.core.errors import WorkdirError, WorkdirLockedError


LOCK_FILE = ".graphbridge.lock"


_HELD: dict[str, list] = {}  # abspath -> [lock file object, locked directory fd or None, depth]


def _holder_text(info: dict) -> str:
  if not info:
    return f"another process (not named: {LOCK_FILE} is missing or empty)"
  return (
    f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
    f"({info.get('command', '?')})"
  )


def _read_info(f) -> dict:
  try:
    f.seek(0)
    text = f.read()
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {}


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError):
    return True
  return True


_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def _try_flock(fd: int) -> bool:
  """True if taken; False if another process holds it; OSError if this file system cannot."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as exc:
    if exc.errno in _BUSY:
      return False
    raise
  return True


class WorkdirLock:
  """Context manager holding the workdir lock: `with WorkdirLock(workdir, "graphbridge-train"):`."""

  def __init__(
    self,
    workdir: str | None,
    command: str | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
  ):
    self.workdir = os.path.abspath(workdir) if workdir else None
    self.command = command or " ".join(sys.argv) or "python"
    self.log = log

  def __enter__(self) -> "WorkdirLock":
    if self.workdir is None or not _is_process_zero():
      return self
    held = _HELD.get(self.workdir)
    if held is not None:  # re-entrant within this process
      held[2] += 1
      return self
    make_workdir(self.workdir)
    path = os.path.join(self.workdir, LOCK_FILE)
    if os.path.isdir(path):
      raise WorkdirError(
        f"{path} is a directory, not graphbridge's lock file: remove it (graphbridge writes the "
        "name of the process using the workdir there)"
      )
    directory = os.open(self.workdir, os.O_RDONLY)
    try:
      taken = _try_flock(directory)
    except OSError:  # a file system that cannot flock a directory: lock the file instead
      os.close(directory)
      return self._enter_file_lock(path)
    if not taken:
      os.close(directory)
      raise WorkdirLockedError(
        f"{self.workdir} is in use by {_holder_text(_read_path(path))}; wait for it to finish, "
        "stop it, or use another --workdir"
      )
    try:
      f = open(path, "a+")
    except OSError:
      os.close(directory)
      raise
    self._take(f, directory)
    return self

  def _enter_file_lock(self, path: str) -> "WorkdirLock":
    """The lock on the file itself, re-opened if the path stopped naming the locked file (it was
    deleted or replaced while this process waited for it)."""
    for _ in range(10):
      f = open(path, "a+")
      try:
        taken = _try_flock(f.fileno())
      except OSError as exc:
        f.close()
        self.log(f"note: cannot lock {path} ({exc.strerror}); not protected against a second run")
        return self
      if not taken:
        info = _read_info(f)
        f.close()
        raise WorkdirLockedError(
          f"{self.workdir} is in use by {_holder_text(info)}; wait for it to finish, stop it, or "
          "use another --workdir"
        )
      if _same_file(f, path):
        self._take(f, None)
        return self
      f.close()
    raise WorkdirLockedError(f"{self.workdir}: its lock file {path} keeps being replaced")

  def _take(self, f, directory: int | None) -> None:
    previous = _read_info(f)
    if previous:  # a clean release empties the file: its holder died (the kernel dropped its flock)
      dead = previous.get("host") != socket.gethostname() or not _pid_alive(previous.get("pid"))
      self.log(
        f"note: took over the stale lock of {self.workdir} left by {_holder_text(previous)}"
        + (", which is no longer running" if dead else "")
        + " (it ended without releasing it)"
      )
    info = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "command": self.command,
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    f.seek(0)
    f.truncate()
    f.write(json.dumps(info) + "\n")
    f.flush()
    _HELD[self.workdir] = [f, directory, 1]

  def __exit__(self, *exc) -> None:
    if self.workdir is None or self.workdir not in _HELD:
      return
    held = _HELD[self.workdir]
    held[2] -= 1
    if held[2] > 0:
      return
    f, directory, _ = held
    del _HELD[self.workdir]
    try:
      f.seek(0)
      f.truncate()  # an empty lock file: released cleanly
      f.flush()
      if directory is None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
      pass
    finally:
      f.close()
      if directory is not None:
        os.close(directory)  # drops the flock


def make_workdir(workdir: str) -> None:
  """Create `workdir` (and its parents); WorkdirError naming it if that is impossible."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} is a file, not a directory: choose another --workdir")
  try:
    os.makedirs(workdir, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise WorkdirError(
      f"workdir {workdir}: a part of its path is a file, not a directory; choose another --workdir"
    ) from None


def _read_path(path: str) -> dict:
  """The holder named in the lock file at `path` ({} if it is missing or unreadable)."""
  try:
    with open(path) as f:
      return _read_info(f)
  except OSError:
    return {}


def _same_file(f, path: str) -> bool:
  try:
    return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
  except OSError:
    return False


def _is_process_zero() -> bool:
  try:
    import jax

    return jax.process_index() == 0
  except Exception:  # noqa: BLE001  (before jax.distributed is initialised)
    return True
