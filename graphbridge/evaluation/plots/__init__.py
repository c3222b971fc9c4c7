"""Plotting for reports and comparisons (matplotlib, imported when a figure is drawn)."""
