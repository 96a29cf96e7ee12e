"""Test hosts in Linux network namespaces on one veth bridge (root only).

How this works
--------------
:class:`VirtualNetwork` builds, inside this machine, a small LAN the tests and the testnet own:
one Linux bridge in the root namespace holding the gateway address ``<subnet>.1/24``, and per
host a network namespace joined to the bridge by a veth pair, with its own address
``<subnet>.<10 + i>``. Traffic between hosts crosses real (virtual) links, so gossip and auctions
see real TCP connections that break when a link goes down: :meth:`cut` sets a host's bridge-side
veth down (the host is isolated, its processes keep running), :meth:`heal` brings it back.

Addresses come from 198.18.0.0/15, the block RFC 2544 reserves for network benchmarking, so they
never collide with a real private network. Names carry the creating process id, so concurrent
runs do not clash, and :meth:`destroy` (also on context exit) removes everything it made.

This kernel has no ``netem`` qdisc, so delay and loss are injected by atomic-p2p's own transport
(:mod:`atomic_p2p.faults`), not here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from atomic_p2p.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Host:
    index: int
    netns: str
    address: str
    veth_bridge_side: str
    veth_host_side: str

    def exec_args(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


def available() -> str | None:
    """None when namespaces can be made here, else why not (for skip messages)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


class VirtualNetwork:
    """A bridge plus one namespace per host; use as a context manager."""

    def __init__(self, hosts: int, *, tag: str | None = None) -> None:
        if not 1 <= hosts <= 200:
            raise ConfigError(f"hosts must be 1..200, got {hosts}")
        why = available()
        if why:
            raise ConfigError(f"cannot build a virtual network: {why}")
        self.tag = tag or str(os.getpid() % 100_000)
        self.subnet = f"198.18.{int(self.tag) % 250 + 1}"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"brat{self.tag}"
        self.hosts: list[Host] = []
        self._count = hosts

    def __enter__(self) -> VirtualNetwork:
        self.create()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.destroy()

    def create(self) -> list[Host]:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index in range(self._count):
                self.hosts.append(self._add_host(index))
        except BaseException:
            self.destroy()
            raise
        return self.hosts

    def _add_host(self, index: int) -> Host:
        host = Host(
            index=index,
            netns=f"atomic{self.tag}-{index}",
            address=f"{self.subnet}.{10 + index}",
            veth_bridge_side=f"vb{self.tag}x{index}",
            veth_host_side=f"vh{self.tag}x{index}",
        )
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth_bridge_side, "type", "veth", "peer", "name", host.veth_host_side)
        _ip("link", "set", host.veth_host_side, "netns", host.netns)
        _ip("link", "set", host.veth_bridge_side, "master", self.bridge)
        _ip("link", "set", host.veth_bridge_side, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.veth_host_side)
        _ip("-n", host.netns, "link", "set", host.veth_host_side, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def cut(self, host: Host) -> None:
        """Take the host's link down: it keeps running but can reach nobody."""
        _ip("link", "set", host.veth_bridge_side, "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.veth_bridge_side, "up")

    def destroy(self) -> None:
        """Remove every namespace and link this network made (idempotent)."""
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.veth_bridge_side], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.hosts = []
