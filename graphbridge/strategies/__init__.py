"""The field's alignment methods as strategies of one pipeline, in a registry
(strategies/registry.py)."""

from graphbridge.strategies.registry import REGISTRY, get, names, register, unregister

__all__ = ["REGISTRY", "get", "names", "register", "unregister"]
