"""Replay protection and the book of issued bids (pure: the caller passes the time).

How this works
--------------
A signed BidRequest could be captured and sent again. :class:`RequestGuard` accepts one only when

1. its ``issued_at`` lies within ``window`` of the node's clock (either side: clocks differ),
2. it was not issued before the node started, so a restart cannot reopen old requests that the
   previous process had already seen (it kept no memory of them), and
3. its 16-byte request id was not seen before. An id must be remembered as long as a request
   carrying it could pass check 1: ``issued_at`` may lie up to ``window`` ahead, and is
   accepted until ``window`` after it, so ids are kept for ``2 * window``.

:class:`BidBook` remembers every bid this node signed, keyed by (request id, task id): its
digest, the requester it was made for, the model, price and input spec, so Execute can check that
an order names a bid this node issued, is signed by the requester that asked for it, and comes
before the bid expires. Entries outlive ``valid_until`` by the skew window, so a late order is
told "expired" rather than "unknown", and late feedback can still be attributed.

Both tables are bounded. When one is full of unexpired entries new requests are refused
(RESOURCE_EXHAUSTED): forgetting an id early would let its request be replayed.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from atomic_p2p.errors import (
    BidExpiredError,
    DeadlineError,
    LimitExceededError,
    PreconditionError,
    ProtocolError,
    ReplayError,
    SignatureError,
    StaleRequestError,
)
from atomic_p2p.frozen import quick_init
from atomic_p2p.identity import PeerId
from atomic_p2p.peer.strategies import FeedbackKind, InputSpec

REQUEST_ID_BYTES = 16

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringMap(Generic[K, V]):
    """A bounded map whose entries expire ``ttl_ms`` after insertion, oldest first."""

    def __init__(
        self, ttl_ms: int, capacity: int, what: str, on_expiry: Callable[[V], None] | None = None
    ) -> None:
        self.ttl_ms = ttl_ms
        self.capacity = capacity
        self.what = what
        self._on_expiry = on_expiry  # hears each value as it expires
        self._entries: OrderedDict[K, tuple[int, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def contains(self, key: K, now_ms: int) -> bool:
        self.prune(now_ms)
        return key in self._entries

    def get(self, key: K, now_ms: int) -> V | None:
        self.prune(now_ms)
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V, now_ms: int) -> None:
        self.put_all([(key, value)], now_ms)

    def put_all(self, items: Sequence[tuple[K, V]], now_ms: int) -> None:
        """``put`` for each (key, value), pruned once: all of them, or (over capacity) none."""
        self.prune(now_ms)
        entries = self._entries
        fresh = sum(1 for key, _ in items if key not in entries)
        if len(entries) + fresh > self.capacity:
            raise LimitExceededError(f"{self.capacity} {self.what} remembered already; retry later")
        expires_at = now_ms + self.ttl_ms
        for key, value in items:
            entries[key] = (expires_at, value)

    def prune(self, now_ms: int) -> None:
        # One TTL per map, so insertion order is expiry order (a clock that steps back only delays).
        while self._entries:
            key, (expires_at, value) = next(iter(self._entries.items()))
            if expires_at > now_ms:
                return
            del self._entries[key]
            if self._on_expiry is not None:
                self._on_expiry(value)


@quick_init
@dataclass(frozen=True, slots=True)
class BidRequestHeader:
    """The fields of a verified BidRequest that replay protection looks at."""

    request_id: bytes
    requester_id: bytes  # as claimed in the payload
    signer: PeerId  # as proven by the envelope
    issued_at_ms: int
    deadline_ms: int  # required: 0 is refused
    task_count: int


class RequestGuard:
    def __init__(self, started_at_ms: int, window_ms: int, max_tasks: int, capacity: int) -> None:
        self.started_at_ms = started_at_ms
        self.window_ms = window_ms
        self.max_tasks = max_tasks
        # +1: the window is inclusive (|skew| == window passes), expiry is not (gone at expires_at).
        self._seen: ExpiringMap[bytes, None] = ExpiringMap(2 * window_ms + 1, capacity, "request ids")

    def admit(self, header: BidRequestHeader, now_ms: int) -> None:
        """Raise the error the request deserves, or remember its id and return."""
        if len(header.request_id) != REQUEST_ID_BYTES:
            raise ProtocolError(f"request_id must be {REQUEST_ID_BYTES} bytes, got {len(header.request_id)}")
        if header.requester_id != header.signer.raw:
            raise SignatureError("requester_id is not sha256 of the key that signed the request")
        if not header.deadline_ms:
            raise ProtocolError("deadline_ms is required (Unix ms after which the bids are of no use)")
        skew = header.issued_at_ms - now_ms
        if abs(skew) > self.window_ms:
            raise StaleRequestError(
                f"issued_at is {skew / 1000:+.1f} s from this node's clock; the window is "
                f"±{self.window_ms / 1000:g} s (check the requester's clock)"
            )
        if header.issued_at_ms < self.started_at_ms:
            raise StaleRequestError("the request was issued before this node started; send a new one")
        if self._seen.contains(header.request_id, now_ms):
            raise ReplayError("this request id was already used; every BidRequest needs a fresh one")
        self._seen.put(header.request_id, None, now_ms)
        if header.deadline_ms <= now_ms:
            raise DeadlineError("the request's deadline has passed")
        self.check_task_count(header.task_count)

    def check_task_count(self, count: int) -> None:
        """LimitExceededError (RESOURCE_EXHAUSTED) for more tasks than one request may carry."""
        if count > self.max_tasks:
            raise LimitExceededError(f"{count} tasks in one request; the limit is {self.max_tasks}")


@quick_init
@dataclass(frozen=True, slots=True)
class IssuedBid:
    request_id: bytes
    task_id: str
    digest: bytes  # sha256 of the signed Bid payload
    requester: PeerId
    model_id: str
    valid_until_ms: int
    cost: float
    inputs: tuple[InputSpec, ...]  # every input the bid was for, as the task announced them
    confidence: float = 0.0
    text_count: int = 0  # how many texts the bid was for (a text task)
    source: str = ""  # the address prefix the call for bids came from ("": not known)
    newcomer: bool = False  # made for a requester without history here


class BidBook:
    """The bids this node signed, with fair shares (docs/security.md): the live bids asked for
    from one address prefix may fill at most ``prefix_share`` of the book, those made for
    requesters without history here (none of their orders ran) at most ``newcomer_share``. A
    requester with history is held back by neither, so a flood of fresh identities, from one
    prefix or many, cannot lock established requesters out. Each share is at least
    ``min_quota`` bids (one full request), and never more than the book."""

    def __init__(
        self,
        validity_ms: int,
        grace_ms: int,
        capacity: int,
        *,
        prefix_share: float = 1.0,
        newcomer_share: float = 1.0,
        min_quota: int = 64,
    ) -> None:
        self.validity_ms = validity_ms
        self._bids: ExpiringMap[tuple[bytes, str], IssuedBid] = ExpiringMap(
            validity_ms + grace_ms, capacity, "issued bids", on_expiry=self._expired
        )
        self._feedback: ExpiringMap[tuple[bytes, str, FeedbackKind], None] = ExpiringMap(
            validity_ms + grace_ms, capacity, "feedback notices"
        )
        self.prefix_quota = min(capacity, max(min_quota, math.ceil(capacity * prefix_share)))
        self.newcomer_quota = min(capacity, max(min_quota, math.ceil(capacity * newcomer_share)))
        self._by_source: Counter[str] = Counter()
        self._newcomer_bids = 0
        # Requesters with history here (an order of theirs ran), least recent first; bounded.
        self._history: OrderedDict[bytes, None] = OrderedDict()
        self._history_capacity = capacity

    def has_history(self, requester: PeerId) -> bool:
        return requester.raw in self._history

    def vouch(self, requester: PeerId) -> None:
        """``requester`` had an order run here: from now on it has history."""
        self._history[requester.raw] = None
        self._history.move_to_end(requester.raw)
        if len(self._history) > self._history_capacity:
            self._history.popitem(last=False)

    def check_room(self, now_ms: int, count: int, source: str = "", newcomer: bool = False) -> None:
        """Room for ``count`` more bids asked for from ``source`` (its prefix), or the
        LimitExceededError (RESOURCE_EXHAUSTED) saying which share is used up."""
        self._bids.prune(now_ms)
        if len(self._bids) + count > self._bids.capacity:
            raise LimitExceededError("too many live bids remembered; retry later")
        if source and self._by_source[source] + count > self.prefix_quota:
            raise LimitExceededError(
                f"the live bids asked for from {source} fill its share ({self.prefix_quota}); retry later"
            )
        if newcomer and self._newcomer_bids + count > self.newcomer_quota:
            raise LimitExceededError(
                "the live bids for requesters new to this peer fill their share; retry later"
            )

    @property
    def occupancy(self) -> tuple[int, int]:
        """(bids remembered, capacity); expired bids count until the next bid prunes them."""
        return len(self._bids), self._bids.capacity

    def has_room(self, now_ms: int, count: int) -> bool:
        self._bids.prune(now_ms)
        return len(self._bids) + count <= self._bids.capacity

    def record(self, bid: IssuedBid, now_ms: int) -> None:
        self.record_all([bid], now_ms)

    def record_all(self, bids: Sequence[IssuedBid], now_ms: int) -> None:
        """Remember the bids one call for bids was answered with (all, or none over capacity)."""
        self._bids.put_all([((bid.request_id, bid.task_id), bid) for bid in bids], now_ms)
        for bid in bids:
            if bid.source:
                self._by_source[bid.source] += 1
            self._newcomer_bids += bid.newcomer

    def _expired(self, bid: IssuedBid) -> None:
        if bid.source:
            left = self._by_source[bid.source] - 1
            if left > 0:
                self._by_source[bid.source] = left
            else:
                del self._by_source[bid.source]
        self._newcomer_bids -= bid.newcomer

    def find(self, request_id: bytes, task_id: str, now_ms: int) -> IssuedBid | None:
        return self._bids.get((request_id, task_id), now_ms)

    def lookup(self, request_id: bytes, task_id: str, digest: bytes, now_ms: int) -> IssuedBid:
        """The live bid an order names, or the precondition it fails."""
        bid = self.find(request_id, task_id, now_ms)
        if bid is None or bid.digest != digest:
            raise PreconditionError(
                "this node issued no such bid (or forgot it long ago); ask for bids again"
            )
        if now_ms > bid.valid_until_ms:
            raise BidExpiredError(
                f"the bid expired {(now_ms - bid.valid_until_ms) / 1000:.1f} s ago; ask for bids again"
            )
        return bid

    def note_feedback(self, bid: IssuedBid, kind: FeedbackKind, now_ms: int) -> None:
        """Count each kind of notice once per bid; a repeat is a replay."""
        key = (bid.request_id, bid.task_id, kind)
        if self._feedback.contains(key, now_ms):
            raise ReplayError(f"a {kind.value} notice for this task was already received")
        self._feedback.put(key, None, now_ms)
