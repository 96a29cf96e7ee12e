"""Gossip membership and the model directory: a pure protocol core, its codec and a simulator.

- :mod:`~atomic_p2p.gossip.records`: what peers say about themselves (records, beats, leaves).
- :mod:`~atomic_p2p.gossip.membership`: the sans-I/O state machine (Scuttlebutt + SWIM/Lifeguard).
- :mod:`~atomic_p2p.gossip.directory`: live models by capability and constraints.
- :mod:`~atomic_p2p.gossip.codec`: protobuf translation and signing (the only module that imports
  ``atomic_p2p._proto``; a transport uses it to map messages 1:1).
- :mod:`~atomic_p2p.gossip.simulator`: thousands of nodes on a virtual clock.
"""

from atomic_p2p.gossip.config import GossipConfig, GossipLimits
from atomic_p2p.gossip.directory import Candidate, Directory, Requirements
from atomic_p2p.gossip.membership import GossipStats, Membership
from atomic_p2p.gossip.messages import (
    DigestEntry,
    GossipRequest,
    GossipResponse,
    MemberForgotten,
    MemberJoined,
    MembershipEvent,
    MemberState,
    Outgoing,
    RecordUpdated,
    StateChanged,
)
from atomic_p2p.gossip.records import (
    Heartbeat,
    Leave,
    LoadSummary,
    ModelAdvert,
    PeerRecord,
    RecordLimits,
    Rejection,
    RejectReason,
)
from atomic_p2p.terms import ModelConstraints, Resources

__all__ = [
    "Candidate",
    "DigestEntry",
    "Directory",
    "GossipConfig",
    "GossipLimits",
    "GossipRequest",
    "GossipResponse",
    "GossipStats",
    "Heartbeat",
    "Leave",
    "LoadSummary",
    "MemberForgotten",
    "MemberJoined",
    "MemberState",
    "Membership",
    "MembershipEvent",
    "ModelAdvert",
    "ModelConstraints",
    "Outgoing",
    "PeerRecord",
    "RecordLimits",
    "RecordUpdated",
    "RejectReason",
    "Rejection",
    "Requirements",
    "Resources",
    "StateChanged",
]
