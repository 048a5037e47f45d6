"""A Dask worker killed (SIGKILL) in the middle of the features stage: the stage completes with
the same result (Dask recomputes the lost tasks on the restarted worker), or fails with a clear
error and leaves no build behind that looks finished."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import leftovers, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BUILD_TIMEOUT_S = 400.0
KILL_AFTER_S = 3.0  # into the build: the inputs are profiled, the shuffle is under way


def test_a_worker_killed_mid_build(published, tmp_path: Path, observe) -> None:
    from recflow.compute import dataset_cpu_flag, open_cluster
    from tasks.features import build_features

    settings = published.settings
    compute = settings.compute.model_copy(update={"n_workers": 2, "threads_per_worker": 1})
    out = tmp_path / "features"
    outcome: dict[str, object] = {}
    with open_cluster(compute) as (client, device):
        pids = client.run(os.getpid)

        def build() -> None:
            try:
                outcome["features"] = build_features(
                    published.raw, settings.features, out, cpu=dataset_cpu_flag(device)
                )
            except Exception as error:  # noqa: BLE001 - the outcome is what the test checks
                outcome["error"] = error

        builder = threading.Thread(target=build)
        builder.start()
        time.sleep(KILL_AFTER_S)
        busy = wait_until(
            "a worker running a task",
            lambda: [worker for worker, tasks in client.processing().items() if tasks],
            120,
        )
        victim = busy[0]
        running = sorted({key.split("-")[0] for key in client.processing()[victim]})
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        builder.join(BUILD_TIMEOUT_S)
        assert not builder.is_alive()
        workers_after = len(client.scheduler_info()["workers"])

    built = outcome.get("features")
    observe(
        killed_pid=pids[victim],
        tasks_running_on_it=running[:5],
        seconds_to_finish_after_kill=round(time.monotonic() - killed_at, 1),
        workers_after=workers_after,
        outcome="completed" if built else f"failed: {outcome['error']}",
        rows=None if not built else {"train": built.n_train, "valid": built.n_valid},
        leftovers=leftovers(out) if out.exists() else [],
    )
    assert not out.exists() or leftovers(out) == []
    if built is not None:
        # The same rows as the build no fault disturbed.
        assert (built.n_train, built.n_valid) == (
            published.features.n_train,
            published.features.n_valid,
        )
        assert (built.path / "manifest.json").is_file()
    else:
        error = str(outcome["error"])
        assert "KilledWorker" in type(outcome["error"]).__name__ or "worker" in error.lower()
        assert not any(out.glob("*/manifest.json"))
