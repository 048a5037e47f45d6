"""serving.server.prepare_backend_dir: the backend directory tritonserver loads, built once per
environment. Its backends are symlinks into the pytriton install it was built from."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from serving import server
from serving.server import STUB_NAME, prepare_backend_dir


def pytriton_install(root: Path) -> Path:
    """The parts of an nvidia-pytriton install the backend directory is made of."""
    dist = root / "pytriton" / "tritonserver"
    (dist / "backends" / "python").mkdir(parents=True)
    (dist / "backends" / "python" / "libtriton_python.so").write_bytes(b"backend")
    stubs = dist / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs.mkdir(parents=True)
    (stubs / STUB_NAME).write_bytes(b"stub")
    return root / "pytriton"


def test_a_recreated_venv_elsewhere_never_reuses_links_into_the_deleted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen with a benchmark home kept across worktrees: the cached directory's links pointed
    # into a deleted venv, and Triton failed with "unable to find backend library".
    cache = tmp_path / "home" / "cache"
    first_install = pytriton_install(tmp_path / "venv-1")
    monkeypatch.setattr(server, "_pytriton_root", lambda: first_install)
    prepare_backend_dir(cache)
    shutil.rmtree(tmp_path / "venv-1")

    second_install = pytriton_install(tmp_path / "venv-2")
    monkeypatch.setattr(server, "_pytriton_root", lambda: second_install)
    backends = prepare_backend_dir(cache)

    links = [path for path in backends.rglob("*") if path.is_symlink()]
    assert links and all(link.exists() for link in links)
    assert (backends / "python" / STUB_NAME).read_bytes() == b"stub"
    assert prepare_backend_dir(cache) == backends  # built once for this install
