"""Experiment configs. Shipped in the wheel as the package graphbridge.configs (see setup.py and
graphbridge/configs_resolver.py), so `--config=digits` works from any directory."""
