"""The suite's two-worker split (tests/conftest.py) must really keep each group on one worker."""

from __future__ import annotations

import os

import pytest


def test_each_test_carries_its_group_to_the_xdist_scheduler(request: pytest.FixtureRequest):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("runs under pytest-xdist only (the suite's default; this run used -n 0)")
    # xdist's loadgroup scheduler reads the group from this suffix only. Where it is missing
    # (pytest 9 with xdist 3.8) every group is split and each worker rebuilds the shared setups.
    assert request.node.nodeid.endswith("@test_worker_groups.py"), request.node.nodeid
