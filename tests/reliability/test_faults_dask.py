"""A Dask worker killed (SIGKILL) in the middle of the features stage: the stage completes with
the same rows (Dask recomputes the lost tasks on the restarted worker) and leaves no staging
behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.processes import leftovers, wait_until

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
    # Dask recomputes the killed worker's tasks on the restarted one: the build must complete, and
    # with exactly the rows of the build no fault disturbed.
    assert built is not None, f"the build did not survive the worker kill: {outcome['error']!r}"
    assert (built.path / "manifest.json").is_file()
    assert (built.n_train, built.n_valid) == (
        published.features.n_train,
        published.features.n_valid,
    )
    assert built.cardinalities == published.features.cardinalities
    for split in ("train_dir", "valid_dir"):
        pd.testing.assert_frame_equal(
            _sorted_rows(getattr(built, split)), _sorted_rows(getattr(published.features, split))
        )


def _sorted_rows(split_dir: Path) -> pd.DataFrame:
    """A split's rows in a canonical order: partitioning may differ between the two builds."""
    frame = pd.concat([pd.read_parquet(part) for part in sorted(split_dir.glob("*.parquet"))])
    scalar = [c for c in frame.columns if not isinstance(frame[c].iloc[0], np.ndarray | list)]
    frame = frame.assign(**{c: frame[c].map(tuple) for c in frame.columns if c not in scalar})
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)
