"""open_cluster against real Dask processes: a remote scheduler, and a local CPU cluster."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dask.dataframe as dd
import pandas as pd
import pytest
from distributed import Client

from recflow.artifacts import FeatureSet, RawDataset
from recflow.compute import GPUUnavailableError, open_cluster
from recflow.config import ComputeConfig, SyntheticConfig, load_settings
from tasks import synthetic
from tasks.features import build_features_task

if TYPE_CHECKING:
    # Only for types: tests/conftest.py imports it as a plugin, so pytest rewrites its asserts.
    from tests.support.dask_cluster import DaskCluster


pytestmark = pytest.mark.integration


def _ratings() -> pd.DataFrame:
    return pd.DataFrame(
        {"user": [1, 2, 1, 3, 2, 1, 3, 3], "rating": [5.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 4.0]}
    )


def _mean_rating_on(client: Client) -> pd.Series:
    ratings = dd.from_pandas(_ratings(), npartitions=4)
    return client.compute(ratings.groupby("user")["rating"].mean()).result().sort_index()


def test_existing_scheduler_is_used_and_left_running(dask_cluster: DaskCluster) -> None:
    cfg = ComputeConfig(scheduler_address=dask_cluster.address, device="auto")

    with open_cluster(cfg) as (client, device):
        assert device == "cpu"
        assert len(client.scheduler_info()["workers"]) == dask_cluster.n_workers
        pd.testing.assert_series_equal(
            _mean_rating_on(client), _ratings().groupby("user")["rating"].mean()
        )

    # Only the client was ours to close: the scheduler and its workers are still serving.
    with Client(dask_cluster.address) as other:
        assert len(other.scheduler_info()["workers"]) == dask_cluster.n_workers


def test_gpu_request_checks_the_workers(dask_cluster: DaskCluster) -> None:
    cfg = ComputeConfig(scheduler_address=dask_cluster.address, device="gpu")

    with pytest.raises(GPUUnavailableError, match="Dask workers"):
        with open_cluster(cfg):
            pass


def test_local_cpu_cluster_is_started_and_closed(tmp_path: Path) -> None:
    # One worker: what is under test is the start and the close, not the parallelism.
    cfg = ComputeConfig(device="cpu", n_workers=1, memory_limit="1GB", spill_dir=tmp_path)

    with open_cluster(cfg) as (client, device):
        assert device == "cpu"
        cluster = client.cluster
        assert len(cluster.workers) == cfg.n_workers
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        pd.testing.assert_series_equal(
            _mean_rating_on(client), _ratings().groupby("user")["rating"].mean()
        )

    assert client.status == "closed"
    assert cluster.status.name == "closed"


def test_features_stage_runs_on_an_existing_scheduler(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    data = SyntheticConfig(n_users=150, n_items=80, n_ratings=4_000)
    synthetic.generate(data, tmp_path / "raw")
    raw = RawDataset(
        path=tmp_path / "raw",
        variant="synthetic",
        checksum=synthetic.config_checksum(data),
        n_interactions=data.n_ratings,
        n_users=data.n_users,
        n_items=data.n_items,
    )
    settings = load_settings(
        overrides=[
            f"paths.home={tmp_path / 'home'}",
            f"compute.scheduler_address={dask_cluster.address}",
            "features.split=last_n",
        ]
    )

    features = build_features_task.fn(
        raw, settings.features, settings.validation, settings.compute, settings.paths.features_dir
    )

    assert FeatureSet.load(features.path) == features
    assert features.n_train + features.n_valid == data.n_ratings
    assert features.cardinalities["user_id"] == data.n_users + 3
    # The partitions went through the scheduler's workers, not this process: the cleaning
    # shuffle, the side-feature join, NVTabular's transform and its parquet writes.
    with Client(dask_cluster.address) as client:
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: sorted(dask_scheduler.task_prefixes)
        )
        # The join is fused into the tasks that write the joined splits ("to-parquet").
        # The task-based shuffle names its tasks by stage ("simple-shuffle", "shuffle-split"...).
        assert any("shuffle" in prefix for prefix in prefixes), prefixes
        assert {"to-parquet", "transform", "write-processed"} <= set(prefixes)
        assert len(client.scheduler_info()["workers"]) == dask_cluster.n_workers
