"""Bids for tests: real :class:`~atomic_p2p.requester.types.BidInfo` values, signed by real keys.

A test names its peers (``"fast"``, ``"liar"``); :func:`peer_identity` turns a name into the same
Ed25519 key in every run, so a bid's ``peer_id`` (and the key the evaluator and profiler file it
under, ``str(peer_id)``) is fixed by the name. :func:`make_bid` signs the terms as a wire ``Bid``
with that key, so the envelope verifies, names its signer and has a digest of its own, exactly as a
bid that came over the network and passed the requester's checks.

The wire carries confidence and latency as float32; the :class:`BidInfo` keeps the values given,
so a test compares against what it wrote. Terms the wire cannot carry (a confidence of ``"high"``,
a capability that is not a string) cannot be signed: to see what code does with a malformed bid,
make a valid one and ``dataclasses.replace`` the field.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from atomic_p2p.identity import Identity
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import Bid
from atomic_p2p.requester.types import BidInfo
from atomic_p2p.terms import ModelConstraints, Resources


@functools.lru_cache(maxsize=1024)
def peer_identity(name: str) -> Identity:
    """The key of the test peer called ``name``: derived from the name, the same in every run."""
    return Identity.from_seed(b"atomic_p2p.testing peer " + name.encode())


def make_bid(
    peer: str | Identity = "peer",
    *,
    address: str | None = None,
    task_id: str = "t",
    model_id: str = "m",
    confidence: float = 0.9,
    expected_latency_ms: float = 10.0,
    cost: float = 1.0,
    issued_at_ms: int = 0,
    valid_until_ms: int = 60_000,
    strategy: str = "fixed",
    capabilities: Sequence[str] = (),
    constraints: ModelConstraints | None = None,
    resources: Resources | None = None,
    request_id: bytes = b"\x00" * 16,
    task_digest: bytes = b"",
    reusable_ttl_ms: int = 0,
    record_seq: int = 0,
    reused: bool = False,
    bid_values: Sequence[float] = (),
) -> BidInfo:
    """A verified bid from ``peer`` (a name for :func:`peer_identity`, or an :class:`Identity`).

    Every :class:`BidInfo` field can be set; ``address`` defaults to ``<name>.test:1``. Times are
    milliseconds on whatever clock the test runs (a bid with the defaults is valid until 60 s).
    """
    identity = peer_identity(peer) if isinstance(peer, str) else peer
    name = peer if isinstance(peer, str) else identity.peer_id.short
    constraints = constraints or ModelConstraints()
    resources = resources or Resources()
    terms = Bid(
        request_id=request_id,
        task_id=task_id,
        task_digest=task_digest,
        peer_id=identity.peer_id.raw,
        model_id=model_id,
        confidence_score=confidence,
        expected_latency_ms=expected_latency_ms,
        resource_requirements=resources,
        cost_estimate=cost,
        capabilities=tuple(capabilities),
        constraints=constraints,
        issued_at_ms=issued_at_ms,
        valid_until_ms=valid_until_ms,
        strategy=strategy,
        bid_values=tuple(bid_values),
        reusable_ttl_ms=reusable_ttl_ms,
        record_seq=record_seq,
    )
    return BidInfo(
        peer_id=identity.peer_id,
        address=f"{name}.test:1" if address is None else address,
        task_id=task_id,
        model_id=model_id,
        confidence=confidence,
        expected_latency_ms=expected_latency_ms,
        cost=cost,
        valid_until_ms=valid_until_ms,
        strategy=strategy,
        envelope=codec.sign(identity, terms),
        capabilities=tuple(capabilities),
        constraints=constraints,
        resources=resources,
        request_id=request_id,
        reusable_ttl_ms=reusable_ttl_ms,
        record_seq=record_seq,
        reused=reused,
        bid_values=tuple(bid_values),
    )
