"""Exposure: every server the project starts listens on loopback only, and code-bearing
artifacts (pickled NVTabular workflows, model.py) are not loaded from world-writable places."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from recflow.config import ComputeConfig
from recflow.trust import UntrustedLocation, require_trusted
from recflow_client import TritonRequestError
from serving.runtime import RankingPipeline
from tests.support.network import listening_addresses

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def assert_loopback_only(port: int) -> list[str]:
    addresses = listening_addresses(port)
    assert addresses, f"nothing listens on port {port}"
    assert all(address.is_loopback for address in addresses), addresses
    return [str(address) for address in addresses]


def test_triton_listens_on_loopback_only(server, observe) -> None:
    ports = {
        "grpc": server.config.grpc_port,
        "http": server.config.http_port,
        "metrics": server.config.metrics_port,
    }
    observe(triton={name: assert_loopback_only(port) for name, port in ports.items()})


def test_dask_scheduler_workers_and_dashboard_listen_on_loopback_only(observe) -> None:
    from recflow.compute import open_cluster

    with open_cluster(ComputeConfig(n_workers=1, device="cpu")) as (client, _device):
        info = client.scheduler_info()
        addresses = {
            "scheduler": info["address"],
            "dashboard": client.dashboard_link,
            **{f"worker {n}": address for n, address in enumerate(info["workers"])},
        }
        found = {
            name: assert_loopback_only(urlparse(address.replace("tcp://", "http://")).port)
            for name, address in addresses.items()
        }
    observe(dask=found)


def test_prefect_api_server_listens_on_loopback_only(prefect_harness, observe) -> None:
    from prefect.settings import PREFECT_API_URL

    # recflow run starts this same ephemeral server when PREFECT_API_URL is not set.
    observe(prefect=assert_loopback_only(urlparse(PREFECT_API_URL.value()).port))


def make_world_writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | 0o002)


@pytest.mark.parametrize("where", ["version-dir", "a-file-inside", "a-parent-dir"])
def test_versions_are_not_loaded_from_world_writable_places(
    published, endpoint, tmp_path: Path, where: str
) -> None:
    source = published.newest_version_dir(endpoint.model("ranking"))
    parent = tmp_path / "repo"
    version_dir = parent / "model" / "1"
    shutil.copytree(source, version_dir)
    assert require_trusted(version_dir) == version_dir.resolve()
    target = {
        "version-dir": version_dir,
        "a-file-inside": version_dir / "ranking.onnx",
        "a-parent-dir": parent,
    }[where]
    make_world_writable(target)
    with pytest.raises(UntrustedLocation, match="world-writable"):
        RankingPipeline(version_dir)


def test_triton_refuses_a_world_writable_model_and_keeps_serving(
    published, endpoint, tmp_path: Path, observe
) -> None:
    from recflow_client import RecflowClient
    from serving.server import TritonServer

    # A server of its own: Triton keeps a model that failed to load as UNAVAILABLE, which
    # (strict readiness) can mark the whole server not ready; the shared one must stay clean.
    # The similar endpoint imports no TensorFlow, so this server starts in seconds.
    similar = endpoint.model("similar")
    name = f"{endpoint.prefix}_untrusted"
    repo = tmp_path / "repo"
    source = published.settings.paths.triton_repo / similar
    shutil.copytree(source, repo / similar, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / similar, repo / name)
    config = repo / name / "config.pbtxt"
    config.write_text(config.read_text().replace(similar, name))
    for version_dir in (repo / name).iterdir():
        if version_dir.is_dir():
            make_world_writable(version_dir)
    settings = published.settings  # its ports are 0: the server picks free ones
    with TritonServer(
        repo,
        settings.serving,
        log_file=tmp_path / "tritonserver.log",
        backend_cache_dir=settings.paths.cache_dir,
        models=[similar],
    ) as server:
        with pytest.raises(TritonRequestError, match="world-writable") as refused:
            server.load(name)
        with RecflowClient.from_config(server.config) as client:
            observe(load_error=refused.value.message[:300], server_ready=client.server_ready())
            assert not server.is_model_ready(name)
            assert server.is_model_ready(similar)
            assert len(client.similar(1, 3)) == 3
