"""Test against atomic-p2p: bids signed by real keys, real inputs, real ``atomic-peer`` processes.

Nothing here needs a source checkout; everything works from an installed package.

Bids for the pure parts (the evaluator, scoring, the bid cache) are real
:class:`~atomic_p2p.requester.BidInfo` values, signed by a key derived from a peer's name::

    from atomic_p2p.requester import score
    from atomic_p2p.testing import make_bid, peer_identity

    fast = make_bid("fast", confidence=0.8, expected_latency_ms=10.0, cost=1.0)
    sharp = make_bid("sharp", confidence=0.99, expected_latency_ms=400.0, cost=2.0)
    ranking = score([sharp, fast], "speed", time_left_ms=1000)
    assert ranking.ranked[0].item is fast
    assert fast.peer_id == peer_identity("fast").peer_id

Real digits to send (float32 ``[B, 64]`` in [0, 1], with labels)::

    x, y = digits_batch(16)

Real ``atomic-peer`` processes from config tables (what a peer TOML file holds), each stopped
on exit; the context yields once every process has printed its listening line::

    async with peer_processes([table_a, table_b], tmp_path) as (a, b):
        async with Requester([a.address, b.address]) as requester:
            ...
        a.models, a.log
"""

from atomic_p2p.testing._bids import make_bid, peer_identity
from atomic_p2p.testing._data import digits_batch
from atomic_p2p.testing._processes import PeerProcess, peer_command, peer_processes

__all__ = [
    "PeerProcess",
    "digits_batch",
    "make_bid",
    "peer_command",
    "peer_identity",
    "peer_processes",
]
