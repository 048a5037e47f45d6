"""Generated own data (tests/support/own_data.py) through the import: every drawn source is
imported or refused in one line naming its file or table, never a traceback, never half a
dataset (issue #32). benchmarks/own_data_fuzz.py runs the same through the features stage."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings

from recflow.artifacts import RawDataset
from tests.support.own_data import Table, declared_sources, import_outcome, write_source

pytestmark = pytest.mark.unit

# Ids beyond uint64 in a CSV: Arrow read them as floats, and 2**64 + 1 and 2**64 + 2 were one.
HUGE_CSV_IDS = {
    "interactions": Table(
        pd.DataFrame({"who": [2**64 + 1, 2**64 + 2, 2**64 + 1], "what": [1, 2, 2]}),
        "csv",
        {"user": "who", "item": "what", "timestamp": None},
    )
}
# The shop export of the issue: a list column named labels beside Categorify's own.
LABELS = {
    **HUGE_CSV_IDS,
    "items": Table(
        pd.DataFrame({"product": [1, 2], "labels": [["a", "b"], []], "year": [1999.0, None]}),
        "parquet",
        {"id": "product", "continuous": ["year"], "lists": ["labels"]},
    ),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables=declared_sources())
@example(tables=HUGE_CSV_IDS)
@example(tables=LABELS)
def test_a_drawn_source_is_imported_or_refused_in_one_line(tables):
    with tempfile.TemporaryDirectory() as directory:
        custom = write_source(tables, Path(directory) / "export")
        import_outcome(custom, Path(directory) / "home")


def test_ids_beyond_int64_stay_distinct_as_string_ids(tmp_path):
    dataset = import_outcome(write_source(HUGE_CSV_IDS, tmp_path / "export"), tmp_path / "home")
    assert isinstance(dataset, RawDataset)
    assert dataset.external_ids and dataset.n_users == 2
