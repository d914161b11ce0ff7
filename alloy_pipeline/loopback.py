"""Whether a host is this machine: the one place where a secret may travel without TLS."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """`localhost` or a loopback address (`127.0.0.0/8`, `::1`); False for any other name or none."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
