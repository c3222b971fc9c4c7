"""One writer per workdir: an exclusive `fcntl.flock` on <workdir>/.graphbridge.lock.

Training, grafting and an evaluation that writes its report into a workdir hold the lock for
their whole life. A second one refuses at once, naming the holder (pid, host, command, start
time, as written into the lock file). The kernel drops a flock when its process dies, so a lock
file left by a killed run is taken over at once; its stale holder is named in a note.

Within one process the lock is re-entrant (train_and_evaluate holds it, then train takes it
again). On multi-host runs only process 0 takes it. File systems without flock (some NFS mounts)
get a note and no lock.
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
from graphbridge.core.errors import WorkdirLockedError


LOCK_FILE = ".graphbridge.lock"


_HELD: dict[str, list] = {}  # abspath -> [file object, depth]


def _holder_text(info: dict) -> str:
  if not info:
    return "an unknown process"
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
      held[1] += 1
      return self
    os.makedirs(self.workdir, exist_ok=True)
    path = os.path.join(self.workdir, LOCK_FILE)
    f = open(path, "a+")
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
      if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        info = _read_info(f)
        f.close()
        raise WorkdirLockedError(
          f"{self.workdir} is in use by {_holder_text(info)}; wait for it to finish, stop it, or "
          "use another --workdir"
        ) from None
      f.close()
      self.log(f"note: cannot lock {path} ({exc.strerror}); not protected against a second run")
      return self
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
    _HELD[self.workdir] = [f, 1]
    return self

  def __exit__(self, *exc) -> None:
    if self.workdir is None or self.workdir not in _HELD:
      return
    held = _HELD[self.workdir]
    held[1] -= 1
    if held[1] > 0:
      return
    f = held[0]
    del _HELD[self.workdir]
    try:
      f.seek(0)
      f.truncate()  # an empty lock file: released cleanly
      f.flush()
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
      pass
    finally:
      f.close()


def _is_process_zero() -> bool:
  try:
    import jax

    return jax.process_index() == 0
  except Exception:  # noqa: BLE001  (before jax.distributed is initialised)
    return True
