"""What the reliability scenarios record. The model set and the server they break are the
session's (``published``, ``server`` in tests/conftest.py); the helpers are in tests/support.

Each scenario records what it did and what it observed with ``observe``; the records are
written to ``test-artifacts/reliability.json`` at the end of the session (RELIABILITY.md is
the table made from them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recflow.atomic import write_text_atomic
from recflow.locks import exclusive_lock

OBSERVATIONS = Path(__file__).resolve().parents[2] / "test-artifacts" / "reliability.json"


# --- observations for RELIABILITY.md ----------------------------------------------------------


@pytest.fixture(scope="session")
def observations() -> Iterator[dict[str, dict[str, Any]]]:
    recorded: dict[str, dict[str, Any]] = {}
    yield recorded
    if recorded:
        # Each pytest-xdist worker merges its own records in; the lock keeps them from
        # overwriting each other's.
        with exclusive_lock(OBSERVATIONS.with_suffix(".lock"), timeout_s=60):
            previous = json.loads(OBSERVATIONS.read_text()) if OBSERVATIONS.is_file() else {}
            merged = json.dumps({**previous, **recorded}, indent=2, default=str)
            write_text_atomic(OBSERVATIONS, merged)


@pytest.fixture
def observe(observations, request) -> Callable[..., None]:
    """Record what this scenario observed, under the test's name."""

    def record(**observed: Any) -> None:
        observations.setdefault(request.node.name, {}).update(observed)

    return record
