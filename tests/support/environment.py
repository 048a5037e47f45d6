"""What a test does when the machine lacks something it needs (a browser, the data, a privilege).

On a developer's machine the test is skipped with the reason. In CI (``CI=true``) it fails:
``.ci/run`` provides everything the suite needs, so a skip there would hide a missing install
step or a lost data directory behind a green run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it in CI."""
    if in_ci():
        pytest.fail(f"{reason} (a skip is a failure in CI)", pytrace=False)
    pytest.skip(reason)
