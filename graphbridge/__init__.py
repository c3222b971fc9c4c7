"""graphbridge: align pre-computed embeddings of many modalities through a graph of translators."""

__version__ = "0.1.0"

from graphbridge.graph import Edge, GraphError, ModalityGraph, path_name  # noqa: F401
from graphbridge.translators import EdgeLayout, TranslatorArch, compose  # noqa: F401

from graphbridge.api import Run, config, fit, load  # noqa: F401,E402
