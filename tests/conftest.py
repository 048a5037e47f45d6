"""Shared fixtures. Integration tests start real servers on 127.0.0.1 and stop them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Fixtures for real servers, shared across directories (registered here: only the root conftest
# may declare plugins).
pytest_plugins = ["tests.support.prefect_server", "tests.support.dask_cluster"]

# Heavy libraries print deprecation chatter and try telemetry; neither helps a test log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# The CLI's rich console is made at import, sized from COLUMNS or else the terminal; an xdist
# worker has none (80 columns), and wrapped tables would split the ids the tests look for.
os.environ.setdefault("COLUMNS", "200")

# --- one published model set and one server for the whole session ----------------------------
# Tests that change what is served (a hot swap, the soak) export a newer version and load it;
# tests that stop or kill the server restart it before they return. None assumes a version
# number: each reads the versions it needs from the repository or the server.


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.published import publish_small

    return publish_small(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def endpoint(published):
    from serving.repository import EndpointNames

    return EndpointNames(published.settings.serving.model_prefix)


@pytest.fixture(scope="session")
def server(published, endpoint):
    """Triton on the published repository, serving every endpoint."""
    from serving.server import TritonServer

    with TritonServer.from_settings(published.settings, models=endpoint.all_models) as running:
        yield running


@pytest.fixture
def client(server):
    from recflow_client import RecflowClient

    with RecflowClient.from_config(server.config) as connected:
        yield connected


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect API server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# One marker per directory, so `-m unit` is the quick run: tests/unit needs no server and no Dask
# cluster; tests/integration and tests/reliability start real ones on 127.0.0.1.
SUITES = {"unit", "integration", "reliability"}


# --- two workers (pytest-xdist, `--dist loadgroup` in pyproject) --------------------------------
# Most of the suite waits: on Triton and Prefect starting, on `recflow run` subprocesses, on
# stub loads. Two workers fill that time. Each group runs whole on one worker, so what a group
# builds once is still built once per run: every test of the published model set and its server
# (one group), the Prefect server with its scheduled pipeline (another), and each module (its
# module-scoped fixtures).
SHARED_SETUPS = {
    "published": "published-model-set",
    "scheduled_pipeline": "prefect-server",
    "prefect_server": "prefect-server",
}
# The longest groups start first (longest-first scheduling; minutes measured in CI), so that no
# long group is left to start when the other worker is nearly done. The rest keep their order.
# xdist keeps this order because pyproject passes --no-loadscope-reorder.
LONGEST_FIRST = [
    "published-model-set",  # ~9: serving, soak, restart, publish faults, two concurrent runs
    "prefect-server",  # ~5: server start, a scheduled pipeline run and a cached rerun
    "test_own_data.py",  # ~3: two pipeline runs on your own data, each served
    "test_gate_registry.py",  # ~3: two trainings, three Triton starts
    "test_pipeline_e2e.py",  # ~2: a pipeline run with trial serving, then Triton
    "test_tune_flow.py",
    "test_training.py",
    "test_flows.py",
    "test_faults_dask.py",
    "test_dask_cluster.py",
    "test_features_movielens.py",
]


def worker_group(item: pytest.Item) -> str:
    for fixture, group in SHARED_SETUPS.items():
        if fixture in item.fixturenames:
            return group
    return Path(item.path).name


def longest_first(group: str) -> int:
    return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: longest_first(worker_group(item)))  # stable: the rest keep order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(worker_group(item)))
        suite = Path(item.path).relative_to(Path(__file__).parent).parts[0]
        if suite not in SUITES:
            continue
        if suite == "unit" and item.get_closest_marker("integration"):
            raise pytest.UsageError(f"{item.nodeid} is marked integration but lives in tests/unit")
        if suite == "reliability":
            item.add_marker(pytest.mark.integration)
        item.add_marker(getattr(pytest.mark, suite))
