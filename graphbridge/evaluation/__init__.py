"""Scoring any aligner on any data: metrics, the retrieval engine, the report tables, figures.

Evaluation takes an aligner (or params) and data; it never imports the trainer."""
