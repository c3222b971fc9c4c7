"""The layering contract: each part of graphbridge imports only from the parts below it, and no
module takes part in an import circle. Imports inside functions count like any other (they are
how a circle hides). docs/extending.md draws the layers."""

from __future__ import annotations

import ast
import os
import textwrap

import graphbridge

# bottom to top; a module may import from its own layer and the ones before it
LAYERS = (
  ("core", ("graphbridge.core", "graphbridge.defaults")),
  ("data", ("graphbridge.data", "graphbridge.datasets")),
  ("model", ("graphbridge.model",)),
  ("evaluation", ("graphbridge.evaluation",)),
  ("linear", ("graphbridge.linear",)),
  ("training", ("graphbridge.training",)),
  ("strategies", ("graphbridge.strategies",)),
  ("runs", ("graphbridge.runs",)),
  ("api", ("graphbridge.api", "graphbridge.cli", "graphbridge")),
)


def module_name(root: str, path: str, package: str) -> str:
  parts = os.path.relpath(path, root)[:-3].split(os.sep)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join([package, *parts])


def import_graph(root: str, package: str) -> dict[str, list[tuple[str, int]]]:
  """{module: [(imported in-package module, line)]} of every .py file under `root` (the package
  directory), every import statement counted wherever it is (module level, functions, classes)."""
  modules = {}
  for dirpath, _, files in os.walk(root):
    for f in files:
      if f.endswith(".py"):
        modules[module_name(root, os.path.join(dirpath, f), package)] = os.path.join(dirpath, f)
  graph = {}
  for name, path in modules.items():
    is_package = path.endswith("__init__.py")
    edges = []
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        edges += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == package]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolved against this module's package
          here = name.split(".") if is_package else name.split(".")[:-1]
          base = ".".join(
            here[: len(here) - node.level + 1] + ([node.module] if node.module else [])
          )
        if base.split(".")[0] != package:
          continue
        for a in node.names:  # `from pkg import sub` imports the submodule pkg.sub
          edges.append((f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, node.lineno))
    graph[name] = [(target, line) for target, line in edges if target in modules and target != name]
  return graph


def layer_of(module: str, layers=LAYERS) -> int:
  best, index = -1, None
  for i, (_, prefixes) in enumerate(layers):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
        best, index = len(prefix), i
  return index


def upward_imports(graph, layers=LAYERS) -> list[str]:
  out = []
  for module, edges in graph.items():
    mine = layer_of(module, layers)
    for target, line in edges:
      theirs = layer_of(target, layers)
      if theirs > mine:
        out.append(
          f"{module}:{line} imports {target} ({layers[mine][0]} -> {layers[theirs][0]}, upward)"
        )
  return out


def circles(graph) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w, _ in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return out


ROOT = os.path.dirname(graphbridge.__file__)


def test_every_module_is_in_a_layer():
  assert [m for m in import_graph(ROOT, "graphbridge") if layer_of(m) is None] == []


def test_no_upward_import():
  assert upward_imports(import_graph(ROOT, "graphbridge")) == []


def test_no_import_circle():
  assert circles(import_graph(ROOT, "graphbridge")) == []


def _write(root, files: dict[str, str]) -> str:
  for rel, text in files.items():
    path = os.path.join(root, "pkg", rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(textwrap.dedent(text))
  return os.path.join(root, "pkg")


def test_the_contract_catches_an_upward_import_inside_a_function(tmp_path):
  """The checker on a small package: a lower layer importing from a higher one inside a function is
  reported with its line, and so is the circle it closes."""
  root = _write(
    str(tmp_path),
    {
      "__init__.py": "",
      "low/__init__.py": "",
      "low/a.py": """
          def helper():
            from pkg.high import b  # upward, hidden in a function
            return b
          """,
      "high/__init__.py": "",
      "high/b.py": "from pkg.low import a\n",
    },
  )
  layers = (("low", ("pkg.low", "pkg")), ("high", ("pkg.high",)))
  graph = import_graph(root, "pkg")
  assert upward_imports(graph, layers) == ["pkg.low.a:3 imports pkg.high.b (low -> high, upward)"]
  assert circles(graph) == [["pkg.high.b", "pkg.low.a"]]
  os.remove(os.path.join(root, "low", "a.py"))
  with open(os.path.join(root, "low", "a.py"), "w") as f:
    f.write("def helper():\n  return 1\n")
  graph = import_graph(root, "pkg")
  assert upward_imports(graph, layers) == [] and circles(graph) == []
