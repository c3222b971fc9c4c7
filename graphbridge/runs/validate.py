"""Config validation before any data is loaded or anything is compiled: the config's own checks
(core/fields.py) and the names of plug-ins (strategies, report tables), asked of their
registries."""

from __future__ import annotations

from typing import Iterable

from graphbridge import defaults
from graphbridge.core import fields
from graphbridge.core.errors import ConfigError
from graphbridge.evaluation import evaluators
from graphbridge.strategies import registry as strategies


def _known(registry, import_paths: bool = True):
  """The test "is this name a plug-in of `registry`?" (import paths count where `import_paths`),
  carrying the registry's names as its listing."""

  def known(name: str) -> bool:
    return registry.known(name) if import_paths else name in registry

  known.names = registry.names()
  return known


def reference(config, extra_sections: Iterable[str] = ()) -> dict:
  """The valid keys: the defaults, the settings block of the config's strategy if it brings one
  (config[strategy.name], for a strategy defined outside graphbridge), and `extra_sections` of the
  config as they are."""
  out = defaults.base_config().to_dict()
  name = config.get("strategy", None) if hasattr(config, "get") else None
  if name and strategies.REGISTRY.known(str(name)):
    try:
      strategy = strategies.get(str(name))
    except ConfigError:
      strategy = None
    if strategy is not None and strategy.settings is not None:
      out[strategy.name] = strategy.settings.to_dict()
  for section in extra_sections:
    if section in config:
      out[section] = (
        config[section].to_dict() if hasattr(config[section], "to_dict") else config[section]
      )
  return out


def validate(config, extra_sections: Iterable[str] = ()) -> None:
  """Raise ConfigError listing every problem found (not just the first)."""
  plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  registry = _known(strategies.REGISTRY)
  tables = _known(evaluators.REGISTRY, import_paths=False)
  problems = fields.problems(
    plain,
    reference(config, extra_sections),
    {"strategy": registry},
    {"compare.strategies": registry, "eval.tables": tables},
  )
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
