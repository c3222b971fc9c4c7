"""JAX's persistent compilation cache, on by default for graphbridge's entry points.

A run of the same shapes compiles the same programs again; with the cache a rerun reads them from
disk. The folder is `$GRAPHBRIDGE_COMPILE_CACHE`, else `$XDG_CACHE_HOME/graphbridge/jax` (by
default `~/.cache/graphbridge/jax`); `GRAPHBRIDGE_COMPILE_CACHE=off` (or `--compile_cache=off` on
the command line, `compile_cache="off"` in `graphbridge.fit`) turns it off. A cache folder the user
already gave JAX (`jax_compilation_cache_dir`) is kept as it is. Entries are keyed by the program,
the JAX/XLA versions and the device, so a stale entry is never used; delete the folder to reclaim
the space.
"""

from __future__ import annotations

import logging
import os

ENV = "GRAPHBRIDGE_COMPILE_CACHE"
OFF = ("off", "none", "0", "false", "no")


def default_folder() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "graphbridge", "jax")


def folder(setting: str | None = None) -> str | None:
  """The cache folder a setting names (None: the environment, then the default); None for off."""
  value = os.environ.get(ENV, "") if setting is None else str(setting)
  if value.strip().lower() in OFF:
    return None
  return os.path.abspath(os.path.expanduser(value.strip())) if value.strip() else default_folder()


def enable(setting: str | None = None) -> str | None:
  """Point JAX's persistent compilation cache at folder(setting) unless the user has set one; every
  program is cached (no minimum compile time: a small run's many short compiles add up). Returns
  the folder in use, or None when off or when the folder cannot be created (a warning; the run
  goes on compiling as before)."""
  import jax

  where = folder(setting)
  current = jax.config.jax_compilation_cache_dir
  if where is None:
    if current and current == _ours.get("folder"):
      jax.config.update("jax_compilation_cache_dir", None)
      _reset()
      _ours.clear()
    return None
  if current and current != _ours.get("folder"):
    return current  # the user's own cache
  if current == where:
    return where
  try:
    os.makedirs(where, exist_ok=True)
  except OSError as exc:
    logging.warning("compilation cache off: cannot create %s (%s)", where, exc)
    return None
  jax.config.update("jax_compilation_cache_dir", where)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _reset()
  _ours["folder"] = where
  return where


_ours: dict[str, str] = {}


def _reset() -> None:
  """JAX reads the cache setting once, at its first compile; a process that compiled before (a
  notebook) must start the cache again for the new folder to take effect."""
  try:
    from jax._src import compilation_cache

    compilation_cache.reset_cache()
  except (ImportError, AttributeError):  # a JAX without it: the setting applies from the start
    pass
