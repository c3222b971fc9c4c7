"""Inputs a careless or hostile user gives: config values, data files, labels, Python API
arguments, command lines. Each is one clear error (one line and exit 2 in the CLIs) or, where
going on is right, the right numbers with the record saying what was used (docs/reliability.md)."""

from __future__ import annotations

import numpy as np

from graphbridge.evaluation import report as report_lib
from tests.test_querybank import _hub_data, _Identity


def test_querybank_k_beyond_the_bank_records_the_k_used():
  dataset = _hub_data()  # 40 train rows of the query modality a, 40 of b
  asked = report_lib.build_report(
    _Identity(),
    dataset,
    options=report_lib.EvalOptions(tables=("retrieval",), querybank_k=100000),
  )
  whole = report_lib.build_report(
    _Identity(), dataset, options=report_lib.EvalOptions(tables=("retrieval",), querybank_k=40)
  )
  summary = asked.summary
  assert summary["querybank_k_used"] == {"a": 40, "b": 40}
  assert "k=100000 asked for" in summary["querybank"]
  assert "used k=40 for a queries, k=40 for b queries" in summary["querybank"]
  markdown = report_lib.markdown(summary, {}, "t")
  assert (
    "its 40 (a), 40 (b) nearest train rows" in markdown and "its 100000 nearest" not in markdown
  )
  # the numbers are those of the k used
  for got, want in zip(summary["rows"], whole.summary["rows"]):
    assert got["mAP"] == want["mAP"]
  assert "querybank_k_used" not in whole.summary and whole.summary["querybank"] == (
    "on, k=40 (asked for)"
  )
  np.testing.assert_equal(summary["querybank_k"], 100000)
