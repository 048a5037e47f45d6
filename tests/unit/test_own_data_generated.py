"""Generated own data (tests/support/own_data.py) through the import: every drawn source is
imported or refused in one line naming its file or table, never a traceback, never half a
dataset (issue #32). benchmarks/own_data_fuzz.py runs the same through the features stage."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.support.own_data import declared_sources, import_outcome, write_source

pytestmark = pytest.mark.unit


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables=declared_sources())
def test_a_drawn_source_is_imported_or_refused_in_one_line(tables):
    with tempfile.TemporaryDirectory() as directory:
        custom = write_source(tables, Path(directory) / "export")
        import_outcome(custom, Path(directory) / "home")
