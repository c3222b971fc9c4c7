"""Translators (Flax MLPs on the edges of a graph), the objective protocol and the loss plan."""
