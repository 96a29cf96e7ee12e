"""Test against atomic-p2p: a whole market in memory on a fake clock, bids signed by real keys,
real inputs, real ``atomic-peer`` processes.

Nothing here needs a source checkout; everything works from an installed package.

A market with no sockets: :class:`InMemoryNetwork` hosts sellers (the peer's own seller core and
servicer, minus gRPC) and its transport carries the requester's calls to them as codec bytes; on a
:class:`FakeClock` with ``autojump`` every deadline, late bidder and fallback plays out in
microseconds and the same way every time::

    clock = FakeClock(autojump=True)
    network = InMemoryNetwork(clock)
    sharp = network.add_peer(seller_config("sharp", tmp_path, confidence=0.95))
    dull = network.add_peer(seller_config("dull", tmp_path, confidence=0.6))
    network.delay(sharp.address, 10.0, method="Execute")  # the favourite hangs when it runs
    async with Requester([sharp.address, dull.address], transport=network.transport(), clock=clock) as r:
        result = await r.run("classify/digits", {"x": digits_batch(4)[0]})
    assert result.winner.address == dull.address  # fell back, after exactly the call timeout

A generation model that needs no training (:func:`count_up_lm`: after token t it says t + 1),
hosted by :func:`generator_config`, optionally breaking at a sequence length or slow per step::

    fragile = network.add_peer(generator_config("fragile", tmp_path, confidence=0.95, fail_at_length=5))
    steady = network.add_peer(generator_config("steady", tmp_path, confidence=0.6))
    async with Requester([fragile.address, steady.address], transport=network.transport(), clock=clock) as r:
        result = await r.generate("generate/count", [1, 2, 3], max_tokens=6).collect()
    assert result.tokens == (4, 5, 6, 7, 8, 9)  # fragile made 4, 5; steady went on from there

A text embedding model (:func:`text_embedder`, kind ``embedding``: the unit-length mean of seeded
token vectors) hosted by :func:`text_embedder_config`::

    embedder = network.add_peer(text_embedder_config("embedder", tmp_path, dimensions=16))
    result = await requester.run("embed/text", text=["a review", "another"])
    result.outputs["embedding"]  # float32[2, 16], each row of unit length

Gossip members by the thousand run in :class:`GossipSimulator` (a virtual clock, loss, partitions).

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

from atomic_p2p.clock import FakeClock
from atomic_p2p.gossip.simulator import Simulator as GossipSimulator
from atomic_p2p.testing._bids import make_bid, peer_identity
from atomic_p2p.testing._data import digits_batch
from atomic_p2p.testing._models import count_up_lm, generator_config, linear_classifier, seller_config
from atomic_p2p.testing._network import InMemoryNetwork, InMemoryPeer, InMemoryTransport
from atomic_p2p.testing._processes import PeerProcess, peer_command, peer_processes
from atomic_p2p.testing._text import (
    text_classifier,
    text_embedder,
    text_embedder_config,
    text_generator,
    text_generator_config,
    text_seller_config,
)

__all__ = [
    "FakeClock",
    "GossipSimulator",
    "InMemoryNetwork",
    "InMemoryPeer",
    "InMemoryTransport",
    "PeerProcess",
    "count_up_lm",
    "digits_batch",
    "generator_config",
    "linear_classifier",
    "make_bid",
    "peer_command",
    "peer_identity",
    "peer_processes",
    "seller_config",
    "text_classifier",
    "text_embedder",
    "text_embedder_config",
    "text_generator",
    "text_generator_config",
    "text_seller_config",
]
