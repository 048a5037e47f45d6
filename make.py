#!/usr/bin/env python3
"""Set up the locked environment if needed, then run the demo or the tests.

    python3 make.py demo     # the whole pipeline on the offline synthetic data, served and queried
    python3 make.py test     # the test suite (unit + integration, real servers)

Needs only python3 and pip: uv is installed for the user if missing, and uv builds ``.venv``
from ``uv.lock`` (idempotent: a second run changes nothing). Extra arguments are passed on,
e.g. ``python3 make.py test -k features`` or ``python3 make.py demo --user 7``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
UV_VERSION = "0.9.30"


def sh(*args: str | Path, **kwargs) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, **kwargs)


def uv() -> list[str]:
    probe = [sys.executable, "-m", "uv", "--version"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        sh(sys.executable, "-m", "pip", "install", "--user", "--quiet", f"uv=={UV_VERSION}")
    return [sys.executable, "-m", "uv"]


def sync(command: str) -> None:
    # Use this interpreter (3.11), never a downloaded one: the machine may be offline.
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    # The demo needs no dev tools (pytest, ruff, linters: ~0.2 GB). --inexact: a venv that
    # has them already (the tests ran) keeps them rather than losing them to the demo.
    only_runtime = ["--no-dev", "--inexact"] if command == "demo" else []
    sh(*uv(), "sync", "--frozen", *only_runtime, "--python", sys.executable, cwd=ROOT, env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    sync(command)
    if command == "demo":
        program = [VENV / "bin" / "recflow", "demo", *rest]
    else:
        program = [VENV / "bin" / "pytest", *rest]
    print("+", " ".join(str(a) for a in program), flush=True)
    return subprocess.run([str(a) for a in program], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
