"""Closed-form linear maps (centering, Procrustes, ridge, CCA) and the aligners built from them:
post-hoc alignment of any strategy and the linear baselines."""
