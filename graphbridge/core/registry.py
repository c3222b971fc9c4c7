"""One registry type for every plug-in family (strategies, report tables).

A name resolves, in order, to: 1. a plug-in registered by code (`registry.register(item)`); 2. a
built-in: `builtins[name]` is the module that defines it (attribute `attr`), imported the first
   time the name is used, so listing or validating names imports nothing (big_vision resolves its
   evaluators the same way);
3. a plug-in outside graphbridge named by import path, `package.module` or `package.module:ATTR`
   (ATTR defaults to `attr`): a config can select it, and a run in another process (a CLI, a
   pod launch) finds it without any registration code.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


class Registry:
  """Plug-ins of one kind, by name (`item.name`).

  kind: what they are, for messages ("strategy"). error: the exception class of an unknown name.
  attr: the module attribute that holds a plug-in. builtins: {name: module path}, in listing order.
  check: called on every registered item (raise TypeError for a wrong kind of object)."""

  def __init__(
    self,
    kind: str,
    error: type[Exception],
    attr: str = "",
    builtins: Mapping[str, str] = (),
    check: Callable[[Any], None] | None = None,
  ):
    self.kind, self.error, self.attr, self.check = kind, error, attr, check
    self._builtins = dict(builtins)
    self._items: dict[str, Any] = {}

  def register(self, item, replace: bool = False):
    """Add `item` under item.name; replace=False refuses to shadow a known name."""
    if self.check is not None:
      self.check(item)
    name = getattr(item, "name", "")
    if not name:
      raise ValueError(f"a {self.kind} needs a name to be registered ({type(item).__name__})")
    if name in self.names() and not replace:
      raise ValueError(
        f"{self.kind} {name!r} is already registered (pass replace=True to override)"
      )
    self._items[name] = item
    return item

  def unregister(self, name: str) -> None:
    self._items.pop(name, None)

  def names(self) -> tuple[str, ...]:
    """Built-in names first (in their order), then the registered ones; nothing is imported."""
    return tuple(dict.fromkeys([*self._builtins, *self._items]))

  def __contains__(self, name: str) -> bool:
    return name in self._items or name in self._builtins

  def known(self, name: str) -> bool:
    """A name `get` can resolve without importing anything new: registered, built in, or an
    import path (checked when it is used)."""
    return name in self or _is_import_path(name)

  def get(self, name: str):
    """The plug-in called `name` (see the module docstring); `error` naming the choices if none."""
    if name in self._items:
      return self._items[name]
    if name in self._builtins:
      return self.register(
        getattr(importlib.import_module(self._builtins[name]), self.attr), replace=True
      )
    if _is_import_path(name):
      module_name, _, attr = name.partition(":")
      try:
        module = importlib.import_module(module_name)
      except ImportError as exc:
        raise self.error(f"{self.kind} {name!r}: cannot import {module_name} ({exc})") from None
      item = getattr(module, attr or self.attr, None)
      if item is None:
        raise self.error(f"{self.kind} {name!r}: {module_name} has no {attr or self.attr}")
      if self.check is not None:
        self.check(item)
      self._items[name] = item
      return item
    raise self.error(
      f"{self.kind} {name!r} is not known (choices: {', '.join(self.names())}; or "
      "'package.module[:ATTR]' for one defined outside graphbridge)"
    )


def _is_import_path(name: str) -> bool:
  module_name = name.partition(":")[0]
  return "." in module_name or ":" in name
