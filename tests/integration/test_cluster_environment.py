"""A local Dask cluster's worker settings stay in its workers, and its workers stay lean.

Dask's nannies put ``distributed.nanny.pre-spawn-environ`` into the environment of the process
that spawns them and left it there: every process recflow started after the features stage
inherited MALLOC_TRIM_THRESHOLD_=65536 and one BLAS/OpenMP thread, and TensorFlow trained at
half speed in such a process (docs/stack.md, "Dask's worker environment").
"""

from __future__ import annotations

import os
import sys

import pytest

from recflow.compute import open_cluster
from recflow.config import ComputeConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_the_workers_environment_does_not_stay_in_this_process(monkeypatch) -> None:
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # one the user set themselves

    with open_cluster(ComputeConfig(n_workers=1, device="cpu")) as (client, _device):
        (worker_environment,) = client.run(lambda: dict(os.environ)).values()

    # The workers still get what Dask gives them...
    assert worker_environment["MALLOC_TRIM_THRESHOLD_"] == "65536"
    # ... and this process, and so whatever it starts next, is as it was.
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert os.environ["OMP_NUM_THREADS"] == "3"


def _merlin_imported_without_tensorflow() -> bool:
    import nvtabular  # noqa: F401  what a worker's first features task imports

    return "merlin.io" in sys.modules and sys.modules.get("tensorflow") is None


def test_the_workers_import_merlin_without_tensorflow() -> None:
    # Merlin imports TensorFlow wherever it is installed; the workers never run it and paid
    # 6.8 s and 280 MB each for it (recflow/dask_worker.py).
    with open_cluster(ComputeConfig(n_workers=1, device="cpu")) as (client, _device):
        (lean,) = client.run(_merlin_imported_without_tensorflow).values()

    assert lean
