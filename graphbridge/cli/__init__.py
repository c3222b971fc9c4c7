"""Command-line entry points (thin: parse flags, build config, call the library)."""
