"""Which addresses a server really listens on, read from the kernel rather than its config."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

TCP_LISTEN = "0A"  # socket state in /proc/net/tcp


def listening_addresses(port: int) -> list[IPv4Address | IPv6Address]:
    """Addresses with a listening TCP socket on ``port``, from /proc/net/tcp{,6}."""
    addresses = []
    for table in ("tcp", "tcp6"):
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            address_hex, port_hex = local.split(":")
            if state != TCP_LISTEN or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            address = ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
            # gRPC listens on an IPv6 socket; 127.0.0.1 then shows as ::ffff:127.0.0.1.
            addresses.append(getattr(address, "ipv4_mapped", None) or address)
    return addresses
