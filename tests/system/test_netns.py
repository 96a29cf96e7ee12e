"""The virtual network the --hosts testnet and the partition tests stand on."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from atomic_p2p import netns
from atomic_p2p.netns import Host, VirtualNetwork

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(netns.available() is not None, reason=f"no network namespaces: {netns.available()}"),
]
PORT = 8765


def connects(source: Host | None, address: str) -> bool:
    code = f"import socket; socket.create_connection(({address!r}, {PORT}), timeout=1)"
    argv = [sys.executable, "-c", code]
    return subprocess.run(source.exec_args(argv) if source else argv, capture_output=True).returncode == 0


def test_hosts_reach_each_other_and_a_cut_isolates_until_healed() -> None:
    with VirtualNetwork(3) as net:
        first, second, third = net.hosts
        assert len({h.address for h in net.hosts}) == 3
        server = subprocess.Popen(
            second.exec_args([sys.executable, "-m", "http.server", str(PORT), "--bind", second.address]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not connects(first, second.address):
                assert time.monotonic() < deadline, "server in the namespace never became reachable"
                time.sleep(0.2)
            assert connects(None, second.address)  # the root namespace reaches hosts via the bridge
            net.cut(second)
            assert not connects(first, second.address)
            assert not connects(third, second.address)
            net.heal(second)
            deadline = time.monotonic() + 10
            while not connects(first, second.address):
                assert time.monotonic() < deadline, "host unreachable after heal"
                time.sleep(0.2)
        finally:
            server.kill()
            server.wait()
        names = [h.netns for h in net.hosts]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names), "namespaces left behind"
