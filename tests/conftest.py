"""Shared fixtures. Integration tests start real servers on 127.0.0.1 and stop them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recflow.config import Settings, load_settings

# Heavy libraries print deprecation chatter and try telemetry; neither helps a test log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

# Small enough to train in well under a minute, large enough for the planted signal to show.
SMALL_DATA = [
    "data.synthetic.n_users=400",
    "data.synthetic.n_items=200",
    "data.synthetic.n_ratings=30000",
    "compute.n_workers=1",
    "compute.threads_per_worker=2",
    "ranking.epochs=6",
    "ranking.batch_size=512",
    "retrieval.epochs=6",
]


def small_settings(home: Path, *overrides: str) -> Settings:
    """Settings for a fast pipeline run on small synthetic data under ``home``."""
    return load_settings(overrides=[f"paths.home={home}", *SMALL_DATA, *overrides])


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect API server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# One marker per directory, so `-m unit` is the quick run: tests/unit needs no server and no Dask
# cluster; tests/integration and tests/reliability start real ones on 127.0.0.1.
SUITES = {"unit", "integration", "reliability"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        suite = Path(item.path).relative_to(Path(__file__).parent).parts[0]
        if suite not in SUITES:
            continue
        if suite == "unit" and item.get_closest_marker("integration"):
            raise pytest.UsageError(f"{item.nodeid} is marked integration but lives in tests/unit")
        if suite == "reliability":
            item.add_marker(pytest.mark.integration)
        item.add_marker(getattr(pytest.mark, suite))
