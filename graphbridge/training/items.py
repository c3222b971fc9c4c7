"""A train state's pytrees split into checkpoint items and merged back.

An item is one edge's rows of every stacked leaf (params, Adam's mu and nu), or one named module's
subtree (a model that is not a translator graph); every other leaf goes to the shared item. The
split is pure pytree work: checkpoint.py writes and reads the items.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from graphbridge.core.errors import CheckpointMismatchError
from graphbridge.core.graph import Edge
from graphbridge.model.translators import EdgeLayout

PyTree = Any


def edge_item_name(edge: Edge | str) -> str:
  edge = Edge.parse(edge) if isinstance(edge, str) else edge
  return f"edge.{edge.src}.{edge.dst}"


def edge_from_item_name(item: str) -> Edge:
  _, src, dst = item.split(".")
  return Edge(src, dst)


def _key_str(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _set_nested(tree: dict, keys: Sequence[str], value) -> None:
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def _get_nested(tree: Mapping, keys: Sequence[str]):
  for k in keys:
    tree = tree[k]
  return tree


# locate(keys of a leaf) -> None (the leaf is shared by every item) or (item names, the leaf's keys
# inside each item, stacked): stacked leaves hold one row per item on their leading axis (a bucket
# of
# translators), the others belong to their one item whole (a module of another model)
Locate = Callable[[Sequence[str]], "tuple[Sequence[str], list[str], bool] | None"]


def edge_locator(layout: EdgeLayout) -> Locate:
  """Leaves under ...edges/<bucket>/... are stacked rows of the bucket's edges."""

  def locate(keys):
    for i in range(len(keys) - 1):
      if keys[i] == "edges" and keys[i + 1] in layout.bucket_by_key:
        bucket = layout.bucket_by_key[keys[i + 1]]
        return [e.name for e in bucket.edges], list(keys[:i]) + list(keys[i + 2 :]), True
    return None

  return locate


def module_locator(modules: Sequence[str]) -> Locate:
  """A leaf belongs whole to the first module named on its path (DMVAE's "enc:image", ...)."""
  names = set(modules)

  def locate(keys):
    hit = next((i for i, k in enumerate(keys) if k in names), None)
    return None if hit is None else ([keys[hit]], list(keys[:hit]) + list(keys[hit + 1 :]), False)

  return locate


def split_items(tree: PyTree, locate: Locate) -> tuple[dict[str, dict], dict]:
  """({item: nested dict of its leaves (its rows of stacked ones)}, nested dict of the shared
  leaves). Empty leaves are left out (Orbax cannot store them; merge_items takes them from the
  template)."""
  per_item: dict[str, dict] = {}
  shared: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [_key_str(k) for k in path]
    if np.size(leaf) == 0:
      continue
    where = locate(keys)
    leaf = np.asarray(leaf)
    if where is None:
      _set_nested(shared, keys or ["value"], leaf)
      continue
    items, rest, stacked = where
    for i, item in enumerate(items):
      _set_nested(per_item.setdefault(item, {}), rest or ["value"], leaf[i] if stacked else leaf)
  return per_item, shared


def merge_items(
  template: PyTree, per_item: Mapping[str, Mapping], shared: Mapping, locate: Locate
) -> PyTree:
  """Inverse of split_items: `template`'s structure filled from items and shared leaves, each leaf
  in the template's dtype; CheckpointMismatchError naming the array if one is missing or shaped
  otherwise."""
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, leaf in leaves_with_path:
    keys = [_key_str(k) for k in path]
    if np.size(leaf) == 0:
      leaves.append(np.asarray(leaf))
      continue
    where = locate(keys)
    try:
      if where is None:
        value = np.asarray(_get_nested(shared, keys or ["value"]))
      else:
        items, rest, stacked = where
        parts = [np.asarray(_get_nested(per_item[item], rest or ["value"])) for item in items]
        for item, part in zip(items, parts):
          expected = np.shape(leaf)[1:] if stacked else np.shape(leaf)
          if part.shape != expected:
            raise CheckpointMismatchError(
              f"checkpoint item {item}: array {'/'.join(rest)} has shape {part.shape}, expected "
              f"{expected} (a dimension or size other than the configured model's)"
            )
        value = np.stack(parts) if stacked else parts[0]
    except KeyError as exc:
      what = "shared state" if where is None else "items"
      raise CheckpointMismatchError(
        f"checkpoint lacks {'/'.join(keys)} in its {what} ({exc}); it was written for "
        "another optimizer or model"
      ) from None
    if value.shape != np.shape(leaf):
      raise CheckpointMismatchError(
        f"checkpoint array {'/'.join(keys)} has shape {value.shape}, expected "
        f"{np.shape(leaf)} (a dimension or size other than the configured model's)"
      )
    leaves.append(value.astype(np.asarray(leaf).dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def split_by_edge(layout: EdgeLayout, tree: PyTree) -> tuple[dict[str, dict], dict]:
  """Split a tree containing {"edges": {bucket: stacked}} subtrees (params or optimizer state):
  ({edge_name: nested dict of that edge's rows}, nested dict of every other leaf)."""
  return split_items(tree, edge_locator(layout))


def merge_by_edge(
  layout: EdgeLayout, template: PyTree, per_edge: Mapping[str, Mapping], shared: Mapping
) -> PyTree:
  """Inverse of split_by_edge: fill `template`'s structure from per-edge rows and shared leaves."""
  return merge_items(template, per_edge, shared, edge_locator(layout))
