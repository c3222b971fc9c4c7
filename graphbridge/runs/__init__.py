"""Whole runs: validating a config, an experiment end to end, comparisons, grafts, evaluating a
workdir, the dry run."""
