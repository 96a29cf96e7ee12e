"""The model directory: which live peers host a model for a capability, within given constraints.

How this works
--------------
A pure index fed by :class:`~atomic_p2p.gossip.membership.Membership` events (``apply(
membership.pop_events())``): records are indexed by capability as they arrive, re-indexed when a
record's ``seq`` grows, and hidden while their member is SUSPECT, DEAD or LEFT. A query walks only
the peers that advertise the capability. ``version(peer)`` is the record ``seq`` the index holds,
so a cache of bids can drop what a peer said before its record changed.

Constraint semantics (0 or empty in an advert means "not declared", see
:mod:`atomic_p2p.gossip.records`): a model qualifies when it advertises the capability, accepts
the batch (``max_batch``), the input length (``max_input_tokens``) and the language
(``supported_languages``), and its ``price_hint`` is within ``max_price``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from atomic_p2p.contract import Spec
from atomic_p2p.gossip.messages import (
    MemberForgotten,
    MemberJoined,
    MembershipEvent,
    MemberState,
    RecordUpdated,
    StateChanged,
)
from atomic_p2p.gossip.records import ModelAdvert, PeerRecord
from atomic_p2p.identity import PeerId


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a task needs from a model."""

    batch: int = 1
    input_tokens: int = 0
    language: str | None = None
    max_price: float | None = None
    # The task's input specs: a model that advertises a contract must be able to take them.
    inputs: tuple[Spec, ...] = ()
    # A text task: a model that declares a contract must say it takes text (one that declares
    # nothing, as from an older peer, stays in and answers for itself).
    text: bool = False

    def admits(self, model: ModelAdvert) -> bool:
        if self.text and model.declares_contract and not model.takes_text:
            return False
        contract = model.contract if self.inputs else None
        if contract is not None and contract.problem(self.inputs) is not None:
            return False
        limits = model.constraints
        if limits.max_batch and self.batch > limits.max_batch:
            return False
        if limits.max_input_tokens and self.input_tokens > limits.max_input_tokens:
            return False
        languages = limits.supported_languages
        if self.language is not None and languages and self.language not in languages:
            return False
        return self.max_price is None or model.price_hint <= self.max_price


ANYTHING = Requirements()


class Candidate(NamedTuple):
    record: PeerRecord
    model: ModelAdvert


class Directory:
    """Live records indexed by capability (see the module docstring)."""

    def __init__(self) -> None:
        self._records: dict[PeerId, PeerRecord] = {}
        self._live: set[PeerId] = set()
        self._by_capability: dict[str, dict[PeerId, tuple[ModelAdvert, ...]]] = {}

    def apply(self, events: Iterable[MembershipEvent]) -> None:
        for event in events:
            if isinstance(event, MemberJoined | RecordUpdated):
                self._index(event.record)
                self._live.add(event.peer_id)
            elif isinstance(event, StateChanged):
                if event.state is MemberState.ALIVE:
                    self._live.add(event.peer_id)
                else:
                    self._live.discard(event.peer_id)
            elif isinstance(event, MemberForgotten):
                self._unindex(event.peer_id)
                self._live.discard(event.peer_id)

    def candidates(self, capability: str, requirements: Requirements = ANYTHING) -> list[Candidate]:
        """Live models for ``capability`` that meet ``requirements``, cheapest first."""
        found = [
            Candidate(self._records[peer], model)
            for peer, models in self._by_capability.get(capability, {}).items()
            if peer in self._live
            for model in models
            if requirements.admits(model)
        ]
        found.sort(key=lambda c: (c.model.price_hint, c.record.peer_id.raw, c.model.model_id))
        return found

    def version(self, peer: PeerId) -> int | None:
        """The ``seq`` of the record indexed for ``peer``; it changes whenever the record does."""
        record = self._records.get(peer)
        return record.seq if record is not None else None

    def record(self, peer: PeerId) -> PeerRecord | None:
        return self._records.get(peer)

    def is_live(self, peer: PeerId) -> bool:
        return peer in self._live

    def capabilities(self) -> list[str]:
        """Capabilities offered by at least one live peer, sorted."""
        return sorted(c for c, peers in self._by_capability.items() if any(p in self._live for p in peers))

    def __len__(self) -> int:
        """Live peers that host at least one model."""
        return sum(1 for peer in self._live if peer in self._records and self._records[peer].models)

    def _index(self, record: PeerRecord) -> None:
        self._unindex(record.peer_id)
        self._records[record.peer_id] = record
        for capability in record.capabilities:
            models = tuple(m for m in record.models if capability in m.capabilities)
            self._by_capability.setdefault(capability, {})[record.peer_id] = models

    def _unindex(self, peer: PeerId) -> None:
        old = self._records.pop(peer, None)
        if old is None:
            return
        for capability in old.capabilities:
            peers = self._by_capability.get(capability)
            if peers is not None:
                peers.pop(peer, None)
                if not peers:
                    del self._by_capability[capability]
