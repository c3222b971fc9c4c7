"""Checking a config against its declarations (defaults.py): the choices of every enumerated
field, the ranges of numeric fields, and the checks that need nothing but the config.

Typos (an unknown key, an unknown optimizer, a malformed edge) fail at once with the valid choices
listed (`problems`). The modules that implement a choice take its list from `CHOICES`; the choices
of plug-in families (strategies, report tables) come from their registries (runs/validate.py).
Edges that name a modality missing from the data are caught when the graph is built from the data
(training/setup.py), still before compilation.
"""

from __future__ import annotations

import difflib
from typing import Callable, Mapping

from graphbridge import defaults
from graphbridge.core.errors import ConfigError, GraphError
from graphbridge.core.graph import Edge

# {dotted key: the values it may take}, as declared; implementing modules take their list from here
CHOICES: dict[str, tuple] = {f.key: f.choices for f in defaults.FIELDS if f.choices}
# comma-separated list fields whose items have fixed choices
LIST_CHOICES: dict[str, tuple] = {f.key: f.items for f in defaults.FIELDS if f.items}
# (key, test, what it must be): checked where the key is present
RANGES = tuple(
  (f.key, f.check, f.must) for f in (*defaults.FIELDS, *defaults.GRAFT_FIELDS) if f.check
)
EDGE_LISTS = ("graph.edges", "graph.extra_edges", "graph.frozen")


def get(config, dotted: str):
  """config's value at a dotted key, None where a part is missing."""
  node = config
  for part in dotted.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def names(value) -> tuple[str, ...]:
  """Config lists may be given as tuples or as one comma-separated string: 'a, b' -> ('a', 'b')."""
  if value is None:
    return ()
  if isinstance(value, str):
    return tuple(v.strip() for v in value.split(",") if v.strip())
  return tuple(str(v) for v in value)


def virtual_nodes(value) -> dict[str, int]:
  """graph.virtual_nodes = "shared:256,common:128" -> {"shared": 256, "common": 128}: nodes with no
  data of their own (projection spaces)."""
  out = {}
  for item in names(value):
    name, _, dim = item.partition(":")
    if not dim.strip().isdigit() or not name.strip():
      raise ConfigError(
        f"graph.virtual_nodes entry {item!r}: expected 'name:dim', e.g. 'shared:256'"
      )
    out[name.strip()] = int(dim)
  return out


def unknown_keys(config: Mapping, reference: Mapping, prefix: str = "") -> list[str]:
  """Dotted keys of `config` absent from `reference`, each with close matches."""
  problems = []
  for key in config:
    where = f"{prefix}{key}"
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference), n=3)
      hint = (
        f" (did you mean {', '.join(prefix + c for c in close)}?)"
        if close
        else f" (valid keys here: {', '.join(prefix + k for k in reference)})"
      )
      problems.append(f"unknown config key {where!r}{hint}")
    elif isinstance(config[key], Mapping) and isinstance(reference[key], Mapping):
      problems += unknown_keys(config[key], reference[key], prefix=f"{where}.")
  return problems


def problems(
  config,
  reference: Mapping,
  choices: Mapping[str, Callable[[str], bool]] = (),
  list_choices: Mapping[str, Callable[[str], bool]] = (),
) -> list[str]:
  """Every problem of `config` that the config alone shows, one line each: keys missing from
  `reference` (the defaults as a dict), values outside CHOICES / LIST_CHOICES and the extra
  `choices` / `list_choices` ({key: is this value known?}, for plug-in families; their listing is
  the function's `names` attribute), malformed edges, numbers out of range."""
  plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  found = unknown_keys(plain, reference)
  for key, known in {**{k: v.__contains__ for k, v in CHOICES.items()}, **dict(choices)}.items():
    value = get(plain, key)
    if value is not None and not _test(known, value):
      found.append(f"{key}={value!r} is not one of: {', '.join(map(str, _listing(key, known)))}")
  for key, known in {
    **{k: v.__contains__ for k, v in LIST_CHOICES.items()},
    **dict(list_choices),
  }.items():
    for value in names(get(plain, key)):
      if not known(value):
        found.append(f"{key} names {value!r}; choose from: {', '.join(_listing(key, known))}")
  for key in EDGE_LISTS:
    for value in names(get(plain, key)):
      try:
        Edge.parse(value)
      except GraphError as exc:
        found.append(f"{key}: {exc}")
  found += range_problems(plain)
  bank, csls = get(plain, "eval.querybank_k"), get(plain, "eval.csls_k")
  if isinstance(bank, int) and bank > 0 and isinstance(csls, int) and csls > 0:
    found.append(
      f"eval.querybank_k={bank} and eval.csls_k={csls}: both correct hubness, choose one "
      "(querybank_k=0 or csls_k=0)"
    )
  try:
    virtual_nodes(get(plain, "graph.virtual_nodes"))
  except ConfigError as exc:
    found.append(str(exc))
  return found


def _test(known, value) -> bool:
  try:
    return bool(known(value))
  except TypeError:  # an unhashable value (a list where a name belongs)
    return False


def _listing(key: str, known) -> tuple:
  return CHOICES.get(key) or LIST_CHOICES.get(key) or tuple(getattr(known, "names", ()))


def range_problems(config) -> list[str]:
  """Numbers outside what the library can use (NaN and wrong types included), one line each."""
  found = []
  for key, ok, what in RANGES:
    value = get(config, key)
    if value is None:
      continue
    if isinstance(value, str) and key in ("eval.ks", "model.hidden", "loss.cycle_weights"):
      try:  # a tuple given as "1,5,10" on a command line
        value = tuple(float(v) for v in names(value))
      except ValueError:
        pass
    try:
      good = not isinstance(value, (str, bool)) and bool(ok(value))
    except (TypeError, ValueError):
      good = False
    if not good:
      found.append(f"{key} must be {what}, got {value!r}")
  steps, finetune = get(config, "train.steps"), get(config, "finetune.steps")
  if steps == 0 and not finetune and not isinstance(steps, bool):
    found.append(
      "train.steps is 0 (and finetune.steps too): nothing would be trained; give train.steps >= 1"
    )
  if get(config, "train.keep_best") and not get(config, "train.validate_every"):
    found.append(
      "train.keep_best needs train.validate_every > 0 (the best step is the best validated one)"
    )
  return found
