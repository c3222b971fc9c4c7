"""Embedded data sets shipped inside the package (see digits/README.md)."""
