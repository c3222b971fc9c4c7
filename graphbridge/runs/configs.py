"""Find experiment configs by name: `--config=digits`, `--config=digits:tiny`, or a file path.

The config files live in `configs/` at the top of the repository. The wheel ships them as the
package `graphbridge.configs` (setup.py maps `configs/` there), so an installed copy resolves the
same names from any directory:

  graphbridge-train --config=digits --workdir=/tmp/gb            # configs/digits.py
  graphbridge-train --config=digits:tiny --workdir=/tmp/gb       # its 'tiny' variant
  graphbridge-train --config=configs/digits.py --workdir=/tmp/gb # a path: used when it exists,
                                                                 # else the packaged file of that
                                                                 # name
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import ml_collections
from graphbridge.core.errors import ConfigNotFoundError


def config_dirs() -> list[str]:
  """Folders searched for bare names: the installed package, then a source checkout's configs/."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the graphbridge package
  dirs = [os.path.join(here, "configs"), os.path.join(os.path.dirname(here), "configs")]
  try:  # an editable install maps graphbridge.configs elsewhere
    spec = importlib.util.find_spec("graphbridge.configs")
  except (ImportError, ValueError):
    spec = None
  if spec is not None and spec.submodule_search_locations:
    dirs += list(spec.submodule_search_locations)
  out = []
  for d in dirs:
    if os.path.isdir(d) and os.path.abspath(d) not in out:
      out.append(os.path.abspath(d))
  return out


def available() -> list[str]:
  """Names of the packaged configs ('compare', 'digits', ...)."""
  names = set()
  for d in config_dirs():
    names.update(f[:-3] for f in os.listdir(d) if f.endswith(".py") and not f.startswith("_"))
  return sorted(names)


def resolve(value: str) -> tuple[str, str | None]:
  """'digits:tiny' -> ('/.../configs/digits.py', 'tiny'); an existing path is kept as given.

  Raises ConfigNotFoundError naming the packaged configs when nothing matches."""
  spec, sep, arg = value.partition(":")
  arg = arg if sep else None
  if os.path.isfile(spec):
    return spec, arg
  name = os.path.basename(spec)
  name = name[:-3] if name.endswith(".py") else name
  for d in config_dirs():
    candidate = os.path.join(d, name + ".py")
    if os.path.isfile(candidate):
      return candidate, arg
  names = available()
  close = difflib.get_close_matches(name, names, n=1)
  hint = f"; did you mean {close[0]!r}?" if close else ""
  raise ConfigNotFoundError(
    f"config {spec!r}: no such file and no packaged config of that name "
    f"(packaged: {', '.join(names) or 'none'}){hint}"
  )


def resolve_flag_value(value: str) -> str:
  """The `--config=` value config_flags should load: 'path' or 'path:arg'."""
  path, arg = resolve(value)
  return path if arg is None else f"{path}:{arg}"


def load(value: str) -> ml_collections.ConfigDict:
  """The ConfigDict of a config name or file: load('digits:tiny') == configs/digits.py
  get_config('tiny')."""
  path, arg = resolve(value)
  name = "graphbridge_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def closest_key(config, dotted: str) -> tuple[str | None, str | None]:
  """(first missing dotted prefix, closest existing key at that level) for `dotted` in `config`;
  (None, None) when the whole key exists."""
  node, done = config, []
  for part in dotted.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1, cutoff=0.5)
      missing = ".".join(done + [part])
      return missing, (".".join(done + [close[0]]) if close else None)
    node = node[part]
    done.append(part)
  return None, None


def unknown_field_message(config, dotted: str) -> str | None:
  """ "unknown config field 'train.stpes' (closest: 'train.steps')", or None when it exists."""
  missing, close = closest_key(config, dotted)
  if missing is None:
    return None
  return f"unknown config field {missing!r}" + (
    f" (closest: {close!r})" if close else " (no close match)"
  )
