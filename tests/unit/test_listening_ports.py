"""serving.server.listening_ports: the ports a process listens on, read from /proc. wait_ready
trusts it to tell whether tritonserver holds its HTTP and metrics ports, not just gRPC."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from serving.server import listening_ports


def test_listeners_of_this_process_on_ipv4_and_ipv6_are_found() -> None:
    # gRPC listens on an IPv6 socket (127.0.0.1 as ::ffff:127.0.0.1), HTTP on an IPv4 one.
    with (
        socket.socket(socket.AF_INET) as ipv4,
        socket.socket(socket.AF_INET6) as ipv6,
        socket.socket(socket.AF_INET) as bound_only,
    ):
        ipv4.bind(("127.0.0.1", 0))
        ipv4.listen()
        ipv6.bind(("::ffff:127.0.0.1", 0))
        ipv6.listen()
        bound_only.bind(("127.0.0.1", 0))  # a port held without listening is not served on
        ports = listening_ports(os.getpid())

        assert ipv4.getsockname()[1] in ports
        assert ipv6.getsockname()[1] in ports
        assert bound_only.getsockname()[1] not in ports


def test_another_process_listener_is_not_ours() -> None:
    # What a port taken by someone else looks like: listening, but not in our process.
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
            "print(s.getsockname()[1], flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        port = int(other.stdout.readline())
        assert port in listening_ports(other.pid)
        assert port not in listening_ports(os.getpid())
    finally:
        other.communicate("")
