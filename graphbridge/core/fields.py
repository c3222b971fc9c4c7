"""The config's declarations beside its defaults (defaults.py): the choices of every enumerated
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
from graphbridge.core.errors import ConfigError, GraphError
from graphbridge.core.graph import Edge


# {dotted key: the values it may take}; the implementing module takes its list from here
CHOICES: dict[str, tuple[str, ...]] = {
  "optim.name": ("adam", "adamw", "sgd"),
  "optim.mu_dtype": ("", "float32", "bfloat16"),
  "model.activation": ("gelu", "gelu_exact", "relu", "silu", "tanh"),
  "model.compute_dtype": ("float32", "bfloat16", "float16"),
  "model.impl": ("flax", "fused"),
  "model.edge_apply": ("auto", "batched", "per_edge"),
  "loss.infonce_positives": ("auto", "label", "pair"),
  "posthoc": ("none", "center", "procrustes", "cca"),
  "eval.split": ("test", "train", "all"),
  "eval.routes": ("auto", "ensemble", "ensemble_all", "best"),
  "pseudo.method": ("sinkhorn", "mutual_nn"),
  "pseudo.gate": ("probe", "agreement"),
}
# comma-separated list fields whose items have fixed choices
LIST_CHOICES: dict[str, tuple[str, ...]] = {
  "compare.posthoc": CHOICES["posthoc"],
  "compare.baselines": ("ridge", "cca"),
}
EDGE_LISTS = ("graph.edges", "graph.extra_edges", "graph.frozen")


def _get(config, dotted: str):
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
  problems = unknown_keys(plain, reference)
  for key, known in {**{k: v.__contains__ for k, v in CHOICES.items()}, **dict(choices)}.items():
    value = _get(config, key)
    if value is not None and not known(value):
      problems.append(f"{key}={value!r} is not one of: {', '.join(_listing(key, known))}")
  for key, known in {
    **{k: v.__contains__ for k, v in LIST_CHOICES.items()},
    **dict(list_choices),
  }.items():
    for value in names(_get(config, key)):
      if not known(value):
        problems.append(f"{key} names {value!r}; choose from: {', '.join(_listing(key, known))}")
  for key in EDGE_LISTS:
    for value in names(_get(config, key)):
      try:
        Edge.parse(value)
      except GraphError as exc:
        problems.append(f"{key}: {exc}")
  positive = {
    "data.batch_size": _get(config, "data.batch_size"),
    "loss.temperature": _get(config, "loss.temperature"),
    "optim.lr": _get(config, "optim.lr"),
  }
  for key, value in positive.items():
    if value is not None and not value > 0:
      problems.append(f"{key} must be > 0, got {value!r}")
  for key in ("train.steps", "finetune.steps", "loss.edge_cos", "loss.infonce"):
    value = _get(config, key)
    if value is not None and value < 0:
      problems.append(f"{key} must be >= 0, got {value!r}")
  problems += range_problems(config)
  hidden = _get(config, "model.hidden")
  if hidden is not None and (not all(int(h) == h and h > 0 for h in hidden)):
    problems.append(f"model.hidden must be positive integers, got {hidden!r}")
  rounds = _get(config, "pseudo.rounds")
  if rounds is not None and (
    isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < -1
  ):
    problems.append(
      f"pseudo.rounds must be an integer >= 0, or -1 for auto (2 rounds where every pair "
      f"set is instance-level), got {rounds!r}"
    )
  bank = _get(config, "eval.querybank_k")
  if bank is not None and (isinstance(bank, bool) or not isinstance(bank, int) or bank < -1):
    problems.append(
      f"eval.querybank_k must be an integer >= 0 (0: off), or -1 for auto (10 where every "
      f"pair set is instance-level), got {bank!r}"
    )
  elif bank is not None and bank > 0 and (_get(config, "eval.csls_k") or 0) > 0:
    problems.append(
      f"eval.querybank_k={bank} and eval.csls_k={_get(config, 'eval.csls_k')}: both correct "
      "hubness, choose one (querybank_k=0 or csls_k=0)"
    )
  cycle = _get(config, "loss.cycle_weights")
  if cycle is not None and any(w < 0 for w in cycle):
    problems.append(
      f"loss.cycle_weights must be >= 0 (weights of 2-, 3-, ... cycles), got {cycle!r}"
    )
  try:
    virtual_nodes(_get(config, "graph.virtual_nodes"))
  except ConfigError as exc:
    problems.append(str(exc))
  return problems


def _listing(key: str, known) -> tuple[str, ...]:
  return CHOICES.get(key) or LIST_CHOICES.get(key) or tuple(getattr(known, "names", ()))


# (key, test, what it must be): checked when the key is present
def _is_int(v) -> bool:
  return (
    isinstance(v, (int,)) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())
  )


RANGES = (
  ("seed", lambda v: _is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
  ("data.batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("data.prefetch", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  (
    "mesh.data",
    lambda v: _is_int(v) and (v == -1 or v >= 1),
    "-1 (all devices) or an integer >= 1",
  ),
  ("mesh.edges", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("optim.warmup_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
  ("optim.final_lr_fraction", lambda v: v >= 0, ">= 0"),
  ("optim.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
  ("optim.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
  ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
  ("optim.grad_clip", lambda v: v >= 0, ">= 0 (0 = no clipping)"),
  ("train.steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
  ("train.log_every", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("train.print_every", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  (
    "train.checkpoint_every",
    lambda v: _is_int(v) and v >= 0,
    "an integer >= 0 (0 = only the last step)",
  ),
  (
    "train.keep_checkpoints",
    lambda v: _is_int(v) and v >= 1,
    "an integer >= 1 (0 would delete the trained weights)",
  ),
  ("train.validate_every", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = off)"),
  ("train.select_edges", lambda v: _is_int(v) and v >= -1, "-1 (auto), 0 (off) or 1 (on)"),
  ("train.select_every", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("train.select_confidence", lambda v: 0 <= v < 1, "in [0, 1) (0: any gain on average)"),
  ("train.select_patience", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = never stop)"),
  ("model.linear_rank", lambda v: _is_int(v) and v >= -1, "-1 (auto), 0 (none) or a rank >= 1"),
  ("train.validate_fraction", lambda v: 0 < v < 1, "in (0, 1)"),
  ("finetune.steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
  ("finetune.lr_scale", lambda v: v > 0, "> 0"),
  ("finetune.cycle_scale", lambda v: v >= 0, ">= 0"),
  ("finetune.edge_cos", lambda v: v >= 0, ">= 0"),
  ("finetune.infonce", lambda v: v >= 0, ">= 0"),
  ("eval.plot_dpi", lambda v: _is_int(v) and 10 <= v <= 2400, "an integer in [10, 2400]"),
  ("compare.seeds", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("pairwise.dim", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("cmcr.dim", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("cmcr.common_dim", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("cmcr.memory_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
  ("cmcr.stage1_steps", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = train.steps)"),
)


def range_problems(config) -> list[str]:
  """Numbers outside what the library can use (NaN included), one line each."""
  problems = []
  for key, ok, what in RANGES:
    value = _get(config, key)
    if value is None or isinstance(value, str):
      continue
    try:
      good = bool(ok(value))
    except TypeError:
      good = False
    if not good:
      problems.append(f"{key} must be {what}, got {value!r}")
  if _get(config, "train.keep_best") and not _get(config, "train.validate_every"):
    problems.append(
      "train.keep_best needs train.validate_every > 0 (the best step is the best validated one)"
    )
  ks = _get(config, "eval.ks")
  if ks is not None:
    values = names(ks) if isinstance(ks, str) else tuple(ks)
    try:
      bad = not values or any(not _is_int(float(k)) or float(k) < 1 for k in values)
    except (TypeError, ValueError):
      bad = True
    if bad:
      problems.append(f"eval.ks must be integers >= 1 (the k of R@k), got {ks!r}")
  return problems
