"""What gossip puts on the wire and what it tells its owner: messages in, messages and events out.

:class:`GossipRequest` and :class:`GossipResponse` mirror the protobuf messages of the same names
one to one (the transport maps them with :mod:`atomic_p2p.gossip.codec`). Two choices made for the
hot path of a 1000-member digest:

- the digest is a read-only mapping keyed by the *raw* 32-byte peer id (the proto's ``bytes
  peer_id``), because ``bytes`` hash in C and a :class:`~atomic_p2p.identity.PeerId` dataclass
  hashes in Python, three times slower, for every one of N lookups per exchange;
- a :class:`DigestEntry` is a ``NamedTuple``: cheap to build, compare and hash.

A member that left is advertised with ``heartbeat == LEFT_HEARTBEAT`` (the largest uint64) and
``dead`` set: a signed Leave outranks every heartbeat of the same record ``seq``, and only a
record with a larger ``seq`` (a restart) outranks the Leave. ``dead`` alone (with an ordinary
heartbeat) says the sender's own failure detector gave up on the member; receivers treat it as
information, never as proof.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import NamedTuple

from atomic_p2p.gossip.records import PeerRecord
from atomic_p2p.identity import Envelope, PeerId

LEFT_HEARTBEAT = 2**64 - 1
"""The digest heartbeat of a member that left (uint64 max: above every real heartbeat)."""


class DigestEntry(NamedTuple):
    """What one node holds about one member: record ``seq``, latest ``heartbeat``, and ``dead``."""

    seq: int
    heartbeat: int
    dead: bool = False


Digest = Mapping[bytes, DigestEntry]
EMPTY_DIGEST: Digest = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GossipRequest:
    """One push-pull exchange, initiator -> responder.

    ``sender`` is the initiator's own signed record (``None`` on a pure push); ``digest`` what it
    holds (empty on a pure push, which asks for nothing back); ``updates`` the signed records,
    heartbeats and leaves it believes the responder lacks.

    ``summary`` (range fingerprints, :mod:`atomic_p2p.gossip.ranges`) makes the request
    *summarised*: then ``digest`` lists only some members (those whose beat went stalest here, or
    those asked for after a range comparison) and the summary stands for the rest. ``None``: a
    full digest, as peers before summaries send; ``b""``: a follow-up that compares no ranges,
    which with an empty ``digest`` asks the responder for its own signed record
    (:data:`WHO_ARE_YOU`).
    """

    sender: Envelope | None
    digest: Digest
    updates: tuple[Envelope, ...]
    summary: bytes | None = None

    @property
    def is_push(self) -> bool:
        return not self.digest and self.summary is None


@dataclass(frozen=True, slots=True)
class GossipResponse:
    """The responder's answer: what the initiator lacks, and what the responder wants in return.

    To a summarised request, ``differing`` lists the ranges whose fingerprints differed and
    ``ranges`` holds the responder's entries in them, so that the initiator can work out what each
    side lacks."""

    updates: tuple[Envelope, ...]
    wanted: Digest = field(default_factory=lambda: EMPTY_DIGEST)
    differing: tuple[int, ...] = ()
    ranges: Digest = field(default_factory=lambda: EMPTY_DIGEST)


EMPTY_RESPONSE = GossipResponse(updates=())
WHO_ARE_YOU = GossipRequest(None, EMPTY_DIGEST, (), b"")
"""Asks a node for its own signed record (and latest beat), nothing else."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A request the transport should send to ``address``.

    ``peer_id`` is ``None`` for a seed known only by address. Report the outcome back with
    :meth:`Membership.handle_response` or, when the call fails (unreachable, timed out),
    :meth:`Membership.failed`. ``follow_up`` marks the second pull of an exchange (after a range
    comparison), whose answer does not start the round's next exchange.
    """

    address: str
    peer_id: PeerId | None
    request: GossipRequest
    follow_up: bool = False


class MemberState(Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"

    @property
    def is_down(self) -> bool:
        """DEAD or LEFT: kept only as a tombstone."""
        return self is MemberState.DEAD or self is MemberState.LEFT


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member became known (first record, or again after its tombstone expired)."""

    peer_id: PeerId
    record: PeerRecord


@dataclass(frozen=True, slots=True)
class RecordUpdated:
    """A member published a record with a larger ``seq``."""

    peer_id: PeerId
    record: PeerRecord


@dataclass(frozen=True, slots=True)
class StateChanged:
    peer_id: PeerId
    previous: MemberState
    state: MemberState


@dataclass(frozen=True, slots=True)
class MemberForgotten:
    """A tombstone expired; the member is no longer in the table."""

    peer_id: PeerId


MembershipEvent = MemberJoined | RecordUpdated | StateChanged | MemberForgotten
