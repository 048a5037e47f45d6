"""How TritonServer tells its own port from one another process took (serving/server.py)."""

from __future__ import annotations

import os
import socket

import pytest

from serving.server import find_free_port, listens_on, port_taken

pytestmark = pytest.mark.unit


def test_a_port_held_by_another_listener_is_taken_and_not_ours():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert port_taken("127.0.0.1", port)
        # This process listens on it; a child server (another pid) would not.
        assert listens_on(os.getpid(), port)
        assert not listens_on(os.getppid(), port)
    assert not port_taken("127.0.0.1", port)
    assert not listens_on(os.getpid(), port)


def test_a_free_port_is_free():
    assert not port_taken("127.0.0.1", find_free_port())
