"""Processes, files and served versions as the integration and reliability tests observe them."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from tests.support.environment import unavailable

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.05


def wait_until(what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(POLL_S)
    raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")


def python_process(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """A real child interpreter (the venv's) running ``code``, in its own session."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **kwargs.pop("env", {})}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def finish(process: subprocess.Popen[str], timeout_s: float) -> tuple[int, str]:
    """Exit code and output of ``process``; killed (with its session) after ``timeout_s``."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        message = f"pid {process.pid} still running after {timeout_s} s:\n{output}"
        raise AssertionError(message) from None
    return process.returncode, output


def tree_state(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones included) -> its content hash or 'dir'."""
    state = {}
    for path in sorted(Path(root).rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            state[relative] = "dir"
        elif path.is_file():
            state[relative] = _file_sha256(path)
    return state


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def leftovers(root: Path) -> list[str]:
    """Staging and temp entries of interrupted atomic writes (recflow.atomic) under ``root``."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in Path(root).rglob(".*")
        if ".staging-" in path.name or ".retired-" in path.name or path.name.endswith(".tmp")
    )


def version_dirs(repo: Path, model: str) -> list[int]:
    """The numeric version directories of ``model`` in ``repo``, ascending."""
    directory = Path(repo) / model
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def ready_versions(grpc_url: str) -> dict[str, list[int]]:
    """Model name -> versions Triton reports READY (its repository index)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(grpc_url) as admin:
        index = admin.get_model_repository_index(as_json=True).get("models", [])
    ready: dict[str, list[int]] = {}
    for model in index:
        if model.get("state") == "READY":
            ready.setdefault(model["name"], []).append(int(model["version"]))
    return {name: sorted(versions) for name, versions in ready.items()}


@contextmanager
def mounted(target: Path, *options: str) -> Iterator[Path]:
    """A tmpfs (``size=...``) or a read-only bind mount at ``target``; skips without privilege."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, target], capture_output=True, text=True)
    if done.returncode != 0:
        unavailable(f"cannot mount ({' '.join(options)}) here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "--lazy", target], check=False)
