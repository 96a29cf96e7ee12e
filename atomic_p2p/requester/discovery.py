"""Where a requester finds peers: fixed addresses, gossip, or both.

With ``bootstrap`` addresses the requester joins the gossip as a member that hosts nothing (a
record with no models and no address: nobody gossips to it, it pulls). Its directory then names
the live peers for a capability; a peer that joins later becomes a candidate on the next round,
and one declared SUSPECT, DEAD or LEFT stops being solicited at once. Fixed ``peers`` are always
candidates, whatever gossip says.

A peer this requester itself failed to reach (:meth:`Discovery.suspect`) is left out at once: its
gossip member becomes SUSPECT in the requester's own membership (until a newer heartbeat or record
of it refutes that), and its address, fixed or gossiped, sits out ``SUSPECT_S`` seconds (unless
nobody else is left). So a killed peer stops being solicited after the first failed call.

Discovery says who *could* be asked; :func:`~.bidpolicy.prefilter` decides who is (see
:mod:`.evaluator` for the places a peer is chosen).
"""

from __future__ import annotations

from collections.abc import Sequence

from atomic_p2p.channels import ChannelPool
from atomic_p2p.clock import SYSTEM_CLOCK, Clock
from atomic_p2p.contract import Spec
from atomic_p2p.gossip import GossipConfig, Requirements
from atomic_p2p.gossip.transport import GossipAgent
from atomic_p2p.identity import Identity, PeerId
from atomic_p2p.tls import parse_address

SUSPECT_S = 2.0
"""How long an address this requester failed to reach is left out of the candidates."""


class Discovery:
    """Candidate addresses for a capability (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        peers: Sequence[str],
        bootstrap: Sequence[str],
        pool: ChannelPool,
        gossip: GossipConfig | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self._unreachable: dict[str, float] = {}  # address -> until when it sits out
        self.peers = tuple(dict.fromkeys(peers))
        # a fixed peer given as PEERID@host:port is the same candidate as its gossiped host:port
        self._fixed = frozenset(parse_address(address)[0] for address in self.peers)
        self.bootstrap = tuple(dict.fromkeys(bootstrap))
        self._identity = identity
        self._pool = pool
        self._config = gossip or GossipConfig()
        self.agent: GossipAgent | None = None

    async def start(self) -> None:
        if self.bootstrap and self.agent is None:
            self.agent = GossipAgent(self._identity, self._config, seeds=self.bootstrap, pool=self._pool)
            await self.agent.start()

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stop(leave=True)
            self.agent = None

    def candidates(
        self, capability: str, batch: int, inputs: Sequence[Spec] = (), *, text: bool = False
    ) -> list[str]:
        """Fixed peers first, then live gossip candidates that accept this batch and, when they
        advertise a contract, these inputs and (``text``: a text task) text (deduplicated)."""
        addresses = list(self.peers)
        if self.agent is not None:
            found = self.agent.directory.candidates(
                capability, Requirements(batch=batch, inputs=tuple(inputs), text=text)
            )
            addresses += [
                c.record.addresses[0]
                for c in found
                if c.record.addresses and c.record.addresses[0] not in self._fixed
            ]
        addresses = list(dict.fromkeys(addresses))
        if self._unreachable:
            now = self._clock.monotonic()
            for address, until in list(self._unreachable.items()):
                if until <= now:
                    del self._unreachable[address]
            reachable = [address for address in addresses if address not in self._unreachable]
            return reachable or addresses
        return addresses

    def suspect(self, address: str) -> None:
        """A call to ``address`` found it unreachable: leave it out (see the module docstring)."""
        self._unreachable[address] = self._clock.monotonic() + SUSPECT_S
        peer = self.peer_of(address)
        if peer is not None and self.agent is not None:
            self.agent.suspect(peer)

    def limits(self, capability: str) -> dict[str, int]:
        """The ``max_batch`` each live gossip candidate advertises for ``capability`` (0: none),
        by address; the largest when an address hosts several models for it."""
        limits: dict[str, int] = {}
        if self.agent is not None:
            for found in self.agent.directory.candidates(capability):
                if found.record.addresses:
                    address = found.record.addresses[0]
                    limit = found.model.constraints.max_batch
                    known = limits.get(address)
                    limits[address] = 0 if 0 in (limit, known) else max(limit, known or 0)
        return limits

    def version(self, peer: PeerId) -> int | None:
        """The gossip record ``seq`` held for ``peer``; None without gossip or record."""
        return self.agent.directory.version(peer) if self.agent is not None else None

    async def first_exchange(self, timeout: float) -> None:
        """Return once one gossip exchange has completed (at once without gossip)."""
        agent = self.agent
        if agent is not None and agent.exchanges_completed == 0:
            await agent.wait_until(lambda: agent.exchanges_completed > 0, timeout)

    def peer_of(self, address: str) -> PeerId | None:
        if self.agent is None:
            return None
        for record in self.agent.membership.live_members():
            if address in record.addresses:
                return record.peer_id
        return None

    async def wait_for(self, capability: str, batch: int, count: int, timeout: float) -> bool:
        """Wait (up to ``timeout``) until at least ``count`` candidates are known."""
        if self.agent is None:
            return len(self.candidates(capability, batch)) >= count
        return await self.agent.wait_until(lambda: len(self.candidates(capability, batch)) >= count, timeout)
