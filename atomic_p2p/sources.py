"""Where a call comes from: a source address and the address prefix it lies in.

A /24 of IPv4 or a /64 of IPv6 is what one host or one customer usually holds, so limits and fair
shares keyed on the prefix bound what an attacker gets for each block of addresses it controls,
however many identities it makes (docs/security.md). A leaf module: the gossip transport and the
peer's guard (:mod:`atomic_p2p.guard`) both use it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

IPV4_PREFIX = 24
IPV6_PREFIX = 64


@dataclass(frozen=True, slots=True)
class Source:
    """Where a call came from: its address (no port) and the prefix that address lies in."""

    address: str
    prefix: str
    local: bool = False
    """A loopback address: the call comes from this machine, where every caller shares it."""


UNKNOWN = Source("", "")
"""A call whose source is not known (in-process calls): per-source limits do not apply."""


@lru_cache(maxsize=4096)
def source_of(peer: str) -> Source:
    """gRPC's ``context.peer()`` -> :class:`Source`; :data:`UNKNOWN` for a name that holds no IP
    address (a unix socket, an in-memory call): per-source limits apply to IP sources only."""
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0].strip("[]") if kind in ("ipv4", "ipv6") else ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    network = ipaddress.ip_network(f"{ip}/{bits}", strict=False)
    return Source(str(ip), str(network), ip.is_loopback)


@lru_cache(maxsize=4096)
def source_of_address(address: str) -> Source:
    """A dialled ``host:port`` (``[v6]:port``) -> :class:`Source` (:data:`UNKNOWN` for a host name)."""
    return source_of(f"{'ipv6' if address.startswith('[') else 'ipv4'}:{address}")
