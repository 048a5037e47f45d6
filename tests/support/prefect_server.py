"""A real Prefect API server and a real ``recflow schedule`` process, for integration tests.

``running_prefect_server`` runs ``prefect server start`` (API, scheduler and dashboard) on a free
127.0.0.1 port with a PREFECT_HOME of its own; ``running_process`` runs any command in its own
session and, on exit, signals the whole session, so nothing it forked survives the test.

The session fixture ``scheduled_pipeline`` is shared by test_prefect_server.py and
test_dashboard.py: one server, one deployment served by ``recflow schedule``, and one pipeline
run triggered through it. tests/conftest.py registers this module as a plugin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import pytest
from prefect.settings import PREFECT_API_URL

from serving.server import find_free_port
from tests.support.settings import SMALL_DATA

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
# A cold `prefect server start` creates and migrates its SQLite database: ~30 s seen here.
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
# One pipeline run on TEST_SETTINGS in a fresh flow-run process: ~2 min seen, often more under load.
RUN_TIMEOUT_S = 900.0
POLL_S = 1.0
API_ATTEMPTS = 5
# What Prefect's client retries: SQLite was busy (503; the scheduler writes too), or the server
# answered too slowly or dropped the connection.
BUSY_SERVER_CODES = {408, 429, 502, 503}
BUSY_SERVER_ERRORS = (
    httpx.TimeoutException,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
DEPLOYMENT = "ci"
# Far from any test run (1 January), so the runner never starts a scheduled run by itself.
TEST_CRON = "0 0 1 1 *"
# SMALL_DATA is the smallest data on which the model reliably beats its baseline (a gate
# check). Trial serving starts Triton (~1 min) and is not what these tests are about.
TEST_SETTINGS = [*SMALL_DATA, "trial.enabled=false", f"schedule.deployment={DEPLOYMENT}"]
RECFLOW = Path(sys.executable).with_name("recflow")


@dataclass(frozen=True)
class PrefectServer:
    """A Prefect server, and the REST API calls the tests make (the ones the dashboard makes).

    Plain HTTP rather than Prefect's client, whose artifact queries this server version refuses.
    """

    url: str
    home: Path
    log: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment of a process that talks to this server, with its own PREFECT_HOME."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One REST call, retried as Prefect's own client retries (prefect.client.base): a busy
        server is not a wrong one. On a loaded 2-core CI machine a GET of a flow run once waited
        past 30 s while a pipeline ran against the same SQLite database."""
        for attempt in range(API_ATTEMPTS):
            last = attempt == API_ATTEMPTS - 1
            try:
                response = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
            except BUSY_SERVER_ERRORS as error:
                if last:
                    detail = f"{method} {path}: {error!r}; {self.log}:\n{tail(self.log)}"
                    raise RuntimeError(detail) from error
            else:
                if response.status_code not in BUSY_SERVER_CODES or last:
                    break
            time.sleep(2**attempt)
        response.raise_for_status()
        return response.json() if response.content else None

    def artifacts(self, *flow_runs: UUID) -> dict[str, dict[str, Any]]:
        """The newest artifact of each key made by ``flow_runs`` (a run and its subflow runs)."""
        runs = [str(run) for run in flow_runs]
        body = {"artifacts": {"flow_run_id": {"any_": runs}}, "sort": "CREATED_DESC"}
        found: dict[str, dict[str, Any]] = {}
        for artifact in self.api("POST", "/artifacts/filter", json=body):
            found.setdefault(artifact["key"], artifact)
        return found

    def latest_artifact(self, key: str) -> dict[str, Any]:
        body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
        (artifact,) = self.api("POST", "/artifacts/filter", json=body)
        return artifact

    def deployment_id(self, flow: str, name: str) -> UUID | None:
        with suppress(httpx.HTTPStatusError):
            return UUID(self.api("GET", f"/deployments/name/{flow}/{name}")["id"])
        return None

    def trigger(self, deployment: UUID) -> UUID:
        return UUID(self.api("POST", f"/deployments/{deployment}/create_flow_run", json={})["id"])

    def flow_run(self, run: UUID) -> dict[str, Any]:
        return self.api("GET", f"/flow_runs/{run}")

    def finished(self, run: UUID, log: Path) -> dict[str, Any]:
        """Wait for the flow run to end; return it as the API describes it."""

        def final() -> dict[str, Any] | None:
            described = self.flow_run(run)
            return described if described["state"]["type"] in FINAL_STATES else None

        return wait_for(f"flow run {run} finished", final, RUN_TIMEOUT_S, log)

    def subflow_runs(self, parent: UUID) -> list[dict[str, Any]]:
        """Flow runs started by ``parent`` (its subflows), oldest first."""
        body = {"flow_runs": {"parent_flow_run_id": {"any_": [str(parent)]}}}
        runs = self.api("POST", "/flow_runs/filter", json=body)
        return sorted(runs, key=lambda run: run["start_time"] or "")

    def logs(self, *flow_runs: UUID) -> list[dict[str, Any]]:
        """Every log record of ``flow_runs`` (theirs and their task runs'), oldest first."""
        body: dict[str, Any] = {"logs": {"flow_run_id": {"any_": [str(run) for run in flow_runs]}}}
        found: list[dict[str, Any]] = []
        while page := self.api("POST", "/logs/filter", json={**body, "offset": len(found)}):
            found += page
        return found

    def task_runs(self, *flow_runs: UUID) -> list[dict[str, Any]]:
        body = {"task_runs": {"flow_run_id": {"any_": [str(run) for run in flow_runs]}}}
        return self.api("POST", "/task_runs/filter", json=body)


def latest_artifact(key: str) -> dict[str, Any]:
    """The newest artifact under ``key`` on the API server this process reports to (the test
    harness's: ``PREFECT_API_URL``)."""
    api_url = PREFECT_API_URL.value()
    return PrefectServer(api_url.removesuffix("/api"), Path(), Path()).latest_artifact(key)


@dataclass(frozen=True)
class ScheduledPipeline:
    server: PrefectServer
    deployment_id: UUID
    deployment_name: str
    cron: str
    artifacts_home: Path
    serve_log: Path
    # The flow run triggered through the deployment and run by the `recflow schedule` process.
    flow_run_id: UUID


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, log: Path) -> T:
    """Poll ``probe`` until it returns something other than None; fail with ``log``'s tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(POLL_S)
    raise TimeoutError(f"{what}: not after {timeout_s:.0f} s; {log}:\n{tail(log)}")


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


@contextmanager
def running_process(
    argv: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` as the leader of a new session; on exit SIGTERM (then SIGKILL) the session."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        _stop_session(proc)


def _stop_session(leader: subprocess.Popen[bytes]) -> None:
    # The session id is the leader's pid, and this session is one we started.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(leader.pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            leader.poll()  # reap it: a zombie leader still counts as a member of its group
            try:
                os.killpg(leader.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@contextmanager
def running_prefect_server(home: Path) -> Iterator[PrefectServer]:
    port = find_free_port(LOOPBACK)
    url = f"http://{LOOPBACK}:{port}"
    log = home / "prefect-server.log"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Where the dashboard's JavaScript finds the API; the default is the default port.
        "PREFECT_UI_API_URL": f"{url}/api",
        # Schedule the deployment's runs within seconds of its creation, not a minute.
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    }
    env.pop("PREFECT_API_URL", None)
    argv = [str(RECFLOW.with_name("prefect")), "server", "start"]
    with running_process([*argv, "--host", LOOPBACK, "--port", str(port)], log, env) as proc:
        server = PrefectServer(url=url, home=home, log=log)

        def healthy() -> bool | None:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{tail(log)}")
            with suppress(httpx.HTTPError):
                return httpx.get(f"{server.api_url}/health", timeout=5).status_code == 200 or None
            return None

        wait_for("Prefect API healthy", healthy, STARTUP_TIMEOUT_S, log)
        yield server


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with running_prefect_server(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server


@pytest.fixture(scope="session")
def scheduled_pipeline(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScheduledPipeline]:
    """``recflow schedule`` serving the pipeline, and one run triggered through it, completed."""
    workdir = tmp_path_factory.mktemp("recflow-schedule")
    artifacts_home = workdir / "home"
    log = workdir / "recflow-schedule.log"
    overrides = [arg for pair in TEST_SETTINGS for arg in ("--set", pair)]
    argv = [
        str(RECFLOW),
        "--home",
        str(artifacts_home),
        *overrides,
        "schedule",
        "--cron",
        TEST_CRON,
    ]
    env = prefect_server.client_env(workdir / "prefect-home")
    # Pick up a triggered run within 2 s instead of Prefect's 10.
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"
    with running_process(argv, log, env) as proc:

        def served() -> UUID | None:
            if proc.poll() is not None:
                raise RuntimeError(f"recflow schedule exited with {proc.returncode}:\n{tail(log)}")
            return prefect_server.deployment_id("recflow-pipeline", DEPLOYMENT)

        deployment = wait_for("deployment served", served, STARTUP_TIMEOUT_S, log)
        flow_run = prefect_server.trigger(deployment)
        prefect_server.finished(flow_run, log)
        yield ScheduledPipeline(
            prefect_server, deployment, DEPLOYMENT, TEST_CRON, artifacts_home, log, flow_run
        )
