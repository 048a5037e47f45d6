"""Device selection and cluster wiring, without starting any process."""

from __future__ import annotations

import importlib.util
import inspect
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import dask_cuda
import pynvml
import pytest

from recflow import compute
from recflow.compute import (
    GPUUnavailableError,
    cudf_available,
    dataset_cpu_flag,
    detect_gpus,
    open_cluster,
    resolve_device,
)
from recflow.config import ComputeConfig

NO_GPU = "no NVIDIA GPU"
NO_CUDF = "cuDF is not installed"


@pytest.mark.parametrize(
    ("requested", "n_gpus", "has_cudf", "expected"),
    [
        ("cpu", 0, False, "cpu"),
        ("cpu", 4, True, "cpu"),
        ("auto", 1, True, "gpu"),
        ("auto", 0, True, "cpu"),
        ("auto", 2, False, "cpu"),
        ("auto", 0, False, "cpu"),
        ("gpu", 1, True, "gpu"),
    ],
)
def test_resolve_device(requested: Any, n_gpus: int, has_cudf: bool, expected: str) -> None:
    assert resolve_device(requested, n_gpus, has_cudf) == expected


@pytest.mark.parametrize(
    ("n_gpus", "has_cudf", "named", "not_named"),
    [
        (0, True, [NO_GPU], [NO_CUDF]),
        (1, False, [NO_CUDF], [NO_GPU]),
        (0, False, [NO_GPU, NO_CUDF], []),
    ],
)
def test_gpu_request_names_what_is_missing(
    n_gpus: int, has_cudf: bool, named: list[str], not_named: list[str]
) -> None:
    with pytest.raises(GPUUnavailableError) as raised:
        resolve_device("gpu", n_gpus, has_cudf, where="node-7")
    message = str(raised.value)
    assert "node-7" in message
    assert all(part in message for part in named)
    assert not any(part in message for part in not_named)


def test_dataset_cpu_flag() -> None:
    assert dataset_cpu_flag("cpu") is True
    assert dataset_cpu_flag("gpu") is False


def test_detect_gpus_without_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    assert detect_gpus() == 0


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, 4),
        ("0,1", 2),
        ("GPU-8f2e, 1", 2),
        ("", 0),
        ("-1", 0),
        ("0,-1,2", 1),
        ("0,1,2,3,4", 4),
    ],
)
def test_detect_gpus_honours_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, expected: int
) -> None:
    shutdowns: list[bool] = []
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 4)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: shutdowns.append(True))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    assert detect_gpus() == expected
    assert shutdowns == [True]


def test_cudf_available(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return object() if name == "cudf" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert cudf_available() is True
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    assert cudf_available() is False


@dataclass
class FakeClient:
    """Stands in for distributed.Client: records how it was made, closed and used."""

    worker_reports: dict[str, tuple[int, bool]] = field(default_factory=dict)
    dashboard_link: str = "http://127.0.0.1:8787/status"
    target: Any = None
    closed: bool = False
    runs: int = 0
    scheduler: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(address="tcp://127.0.0.1:8786")
    )

    def __call__(self, target: Any) -> FakeClient:
        self.target = target
        return self

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def scheduler_info(self) -> dict[str, Any]:
        return {"workers": dict.fromkeys(self.worker_reports, {})}

    def run(self, function: Any) -> dict[str, tuple[int, bool]]:
        self.runs += 1
        return self.worker_reports

    def register_worker_plugin(self, plugin: Any) -> None:
        pass  # what the plugin does to real workers: tests/integration/test_cluster_environment.py


class FakeCluster:
    instances: list[FakeCluster] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.closed = False
        FakeCluster.instances.append(self)

    def __enter__(self) -> FakeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


@pytest.fixture
def fake_dask(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    FakeCluster.instances = []
    monkeypatch.setattr(compute, "Client", client)
    monkeypatch.setattr(compute, "LocalCluster", FakeCluster)
    monkeypatch.setattr(dask_cuda, "LocalCUDACluster", FakeCluster)
    return client


def test_local_cpu_cluster_gets_the_config(fake_dask: FakeClient) -> None:
    cfg = ComputeConfig(device="cpu", n_workers=3, threads_per_worker=2, memory_limit="2GB")

    with open_cluster(cfg) as (client, device):
        (cluster,) = FakeCluster.instances
        assert (client, device, client.target) == (fake_dask, "cpu", cluster)
        assert not cluster.closed

    assert cluster.kwargs == {
        "n_workers": 3,
        "processes": True,
        "threads_per_worker": 2,
        "memory_limit": "2GB",
        "local_directory": None,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }
    assert fake_dask.closed and cluster.closed


def test_local_gpu_cluster_follows_the_dask_cuda_signature(
    fake_dask: FakeClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    real_signature = inspect.signature(dask_cuda.LocalCUDACluster)
    monkeypatch.setattr(compute, "detect_gpus", lambda: 2)
    monkeypatch.setattr(compute, "cudf_available", lambda: True)

    with open_cluster(ComputeConfig(device="auto", spill_dir=tmp_path)) as (_, device):
        assert device == "gpu"

    (cluster,) = FakeCluster.instances
    real_signature.bind(**cluster.kwargs)  # raises on a keyword dask-cuda 23.8 does not take
    assert cluster.kwargs["protocol"] == "tcp"
    assert cluster.kwargs["local_directory"] == str(tmp_path)
    assert "n_workers" not in cluster.kwargs  # one worker per visible GPU
    assert {"rmm_pool_size", "device_memory_limit"} <= cluster.kwargs.keys()
    assert cluster.closed


def test_existing_scheduler_cpu_is_not_probed(fake_dask: FakeClient) -> None:
    cfg = ComputeConfig(scheduler_address="tcp://127.0.0.1:8786", device="cpu")

    with open_cluster(cfg) as (client, device):
        assert (client.target, device) == ("tcp://127.0.0.1:8786", "cpu")

    assert fake_dask.closed
    assert fake_dask.runs == 0
    assert FakeCluster.instances == []


@pytest.mark.parametrize(
    ("reports", "local_cudf", "expected"),
    [
        ({"a": (1, True), "b": (2, True)}, True, "gpu"),
        ({"a": (1, True), "b": (0, True)}, True, "cpu"),
        ({"a": (1, True), "b": (1, False)}, True, "cpu"),
        ({"a": (1, True)}, False, "cpu"),
    ],
)
def test_existing_scheduler_auto_needs_every_worker_and_the_client(
    fake_dask: FakeClient,
    monkeypatch: pytest.MonkeyPatch,
    reports: dict[str, tuple[int, bool]],
    local_cudf: bool,
    expected: str,
) -> None:
    fake_dask.worker_reports = reports
    monkeypatch.setattr(compute, "cudf_available", lambda: local_cudf)

    with open_cluster(ComputeConfig(scheduler_address="tcp://h:8786")) as (_, device):
        assert device == expected


def test_existing_scheduler_without_workers_cannot_be_probed(fake_dask: FakeClient) -> None:
    with pytest.raises(RuntimeError, match="no workers"):
        with open_cluster(ComputeConfig(scheduler_address="tcp://h:8786", device="gpu")):
            pass
    assert fake_dask.closed


def test_dashboard_link_is_logged(fake_dask: FakeClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=compute.__name__)

    with open_cluster(ComputeConfig(device="cpu")):
        pass

    assert fake_dask.dashboard_link in caplog.text
