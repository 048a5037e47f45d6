"""A real multi-process Dask cluster for integration tests: ``dask scheduler`` + ``dask worker``.

Each runs as its own OS process of this venv's interpreter, as on a deployment, so tests see what
a remote scheduler sees (pickling, imports in the workers, a client with no ``.cluster``).
Everything listens on 127.0.0.1 only.

Tests use the session fixture ``dask_cluster`` (tests/conftest.py registers this module as a
plugin), or ``running_dask_cluster`` directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client

# Cold starts import distributed in three processes: ~10 s seen on a busy 2-core machine.
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.1
# The modules behind `dask scheduler` and `dask worker`. The `dask` command itself loads every
# `dask_cli` plugin first, dask-cuda's included, whose numba import costs ~5 s per process.
_COMMANDS = {
    "scheduler": [sys.executable, "-m", "distributed.cli.dask_scheduler"],
    "worker": [sys.executable, "-m", "distributed.cli.dask_worker"],
}
_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class DaskCluster:
    address: str
    n_workers: int


@contextmanager
def running_dask_cluster(workdir: Path, n_workers: int = 2) -> Iterator[DaskCluster]:
    """Start a scheduler and ``n_workers`` single-thread workers.

    Workers run without a nanny: it would restart them on memory breaches, which tests do not
    need, and costs one more interpreter start per worker.

    Logs go to ``workdir/<name>.log``; a process that dies during start-up fails with its log.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    scheduler_file = workdir / "scheduler.json"
    processes = _ProcessGroups(workdir)
    try:
        scheduler = processes.start(
            "scheduler",
            *("--host", _LOOPBACK, "--port", "0"),
            *("--dashboard-address", f"{_LOOPBACK}:0"),
            *("--scheduler-file", str(scheduler_file)),
        )
        address = _wait_for_address(scheduler, scheduler_file, processes.log("scheduler"))
        workers = {
            f"worker-{i}": processes.start(
                "worker",
                address,
                *("--name", f"worker-{i}", "--host", _LOOPBACK),
                *("--nthreads", "1", "--no-nanny"),
                *("--dashboard-address", f"{_LOOPBACK}:0"),
                *("--local-directory", str(workdir / f"worker-{i}")),
                name=f"worker-{i}",
            )
            for i in range(n_workers)
        }
        _wait_for_workers(address, workers, processes)
        yield DaskCluster(address, n_workers)
    finally:
        processes.stop()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A session-wide scheduler with two worker processes."""
    with running_dask_cluster(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster


class _ProcessGroups:
    """Processes started here, each leading a session of its own so that stopping it also reaches
    whatever it forked; stop() signals them all at once, then waits."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._leaders: list[subprocess.Popen[bytes]] = []

    def log(self, name: str) -> Path:
        return self._workdir / f"{name}.log"

    def start(self, command: str, *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
        with self.log(name or command).open("wb") as out:
            proc = subprocess.Popen(
                [*_COMMANDS[command], *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._leaders.append(proc)
        return proc

    def stop(self) -> None:
        # Each group id is its leader's pid, and every group is one this class started.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for leader in self._leaders:
                with suppress(ProcessLookupError):
                    os.killpg(leader.pid, sig)
            if self._all_gone(time.monotonic() + STOP_TIMEOUT_S):
                return

    def _all_gone(self, deadline: float) -> bool:
        while True:
            alive = False
            for leader in self._leaders:
                leader.poll()  # reap it: a zombie leader still counts as a member of its group
                try:
                    os.killpg(leader.pid, 0)
                    alive = True
                except ProcessLookupError:
                    pass
            if not alive:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)


def _wait_for_address(proc: subprocess.Popen[bytes], scheduler_file: Path, log: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {proc.returncode}:\n{log.read_text()}")
        try:
            # A read may race the file's creation.
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(_POLL_S)
    raise TimeoutError(f"no scheduler file after {STARTUP_TIMEOUT_S} s:\n{log.read_text()}")


def _wait_for_workers(
    address: str, workers: dict[str, subprocess.Popen[bytes]], processes: _ProcessGroups
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with Client(address, timeout=STARTUP_TIMEOUT_S) as client:
        while len(client.scheduler_info()["workers"]) < len(workers):
            for name, proc in workers.items():
                if proc.poll() is not None:
                    log = processes.log(name).read_text()
                    raise RuntimeError(f"dask {name} exited during start-up:\n{log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(workers)} workers not up after {STARTUP_TIMEOUT_S} s")
            time.sleep(_POLL_S)
