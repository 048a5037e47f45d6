"""The app-side client (clients/python, the recflow-client wheel) installs and runs without
recflow's training stack: what it imports, what it declares, and what that pulls in."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import recflow_client

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTION = "recflow-client"
# recflow itself and the heavy or settings libraries an app must not get with the client.
TRAINING_STACK = {
    "recflow": ["recflow", "cli", "flows", "release", "serving", "tasks", "models"],
    "pydantic-settings": ["pydantic_settings"],
    "pydantic": ["pydantic"],
    "pyyaml": ["yaml"],
    "pandas": ["pandas"],
    "pyarrow": ["pyarrow"],
    "tensorflow-cpu": ["tensorflow"],
    "merlin-core": ["merlin"],
    "merlin-models": ["merlin"],
    "nvtabular": ["nvtabular"],
    "prefect": ["prefect"],
    "dask": ["dask"],
    "distributed": ["distributed"],
    "nvidia-pytriton": ["pytriton"],
}
BLOCKED_MODULES = sorted({module for modules in TRAINING_STACK.values() for module in modules})

# Imports and uses both transports with every module of the training stack unimportable: a
# sys.meta_path finder ahead of all others refuses them (even where a .pth puts the recflow
# checkout on sys.path, as the editable install does).
WITHOUT_THE_STACK = textwrap.dedent(
    """
    import sys

    BLOCKED = set(sys.argv[1].split(","))

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"the client imported {name}")
            return None

    sys.meta_path.insert(0, Refuse())

    import numpy as np
    from recflow_client import (
        AsyncRecflowClient, HttpRecflowClient, RecflowClient, TritonRequestError,
    )

    class Settings:  # an app's own settings object, no pydantic
        host, grpc_port, http_port = "127.0.0.1", 1, 1
        request_timeout_s, model_prefix, max_batch_size = 2.0, "recflow", 8

    for client_class in (RecflowClient, HttpRecflowClient):
        with client_class.from_config(Settings(), retries=0) as client:
            assert not client.server_ready()
            try:
                client.recommend(42, 5, candidates=[1, 2])
            except TritonRequestError as error:
                assert error.code.name == "UNAVAILABLE", error
            else:
                raise AssertionError("a request to a closed port succeeded")
    assert AsyncRecflowClient.recommend
    print(sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED))
    """
)


def test_the_client_imports_and_runs_without_the_training_stack(tmp_path: Path) -> None:
    # -I: no PYTHONPATH, no user site, not the current directory (tmp_path anyway).
    result = subprocess.run(
        [sys.executable, "-I", "-c", WITHOUT_THE_STACK, ",".join(BLOCKED_MODULES)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_recflow_uses_the_module_the_wheel_ships() -> None:
    # One source: recflow's CLI, server and trial serving import this very package.
    assert Path(recflow_client.__file__).parent == REPO / "clients" / "python" / "recflow_client"
    assert not (REPO / "serving" / "client.py").exists()


def _requirements(name: str, extras: frozenset[str]) -> list[Requirement]:
    """The requirements of an installed distribution that apply here, with ``extras`` asked."""
    environments = [{**default_environment(), "extra": extra} for extra in extras or {""}]
    return [
        requirement
        for requirement in map(Requirement, importlib.metadata.requires(name) or [])
        if requirement.marker is None
        or any(requirement.marker.evaluate(environment) for environment in environments)
    ]


def _closure(name: str) -> set[str]:
    """Every distribution ``pip install <name>`` brings, read from the installed metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, frozenset[str]())]
    while todo:
        current, extras = todo.pop()
        if (canonicalize_name(current), extras) in seen:
            continue
        seen.add((canonicalize_name(current), extras))
        todo += [(req.name, frozenset(req.extras)) for req in _requirements(current, extras)]
    return {distribution for distribution, _ in seen}


def test_the_wheel_declares_only_the_transport() -> None:
    declared = {canonicalize_name(req.name) for req in _requirements(DISTRIBUTION, frozenset())}
    assert declared == {"tritonclient", "numpy", "grpcio"}

    brought = _closure(DISTRIBUTION)

    assert "tritonclient" in brought and "geventhttpclient" in brought  # both transports
    assert brought.isdisjoint(TRAINING_STACK), sorted(brought & TRAINING_STACK.keys())
