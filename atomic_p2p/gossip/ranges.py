"""Range fingerprints over the member table: a digest whose size does not grow with the membership.

How this works
--------------
Range-based set reconciliation (Meyer, "Range-Based Set Reconciliation", SRDS 2023), one level
deep. The peer-id space is cut into ``R`` equal ranges by the top bits of the id (``R`` a power of
two, at most :data:`FINEST`). A range's *fingerprint* summarises the records held in it that are
not written off: each ``(peer_id, seq)`` hashes to a 128-bit number; the range keeps their sum mod
2^128 and their count (both are updated in O(1) when a record arrives or a member goes down, and
sums of neighbouring ranges add up, so one fine index answers for any coarser ``R``); the
fingerprint is ``sha256(sum || count)[:8]``. Two nodes that hold the same records have the same
fingerprints; a differing range pinpoints where they differ, and only that range's entries travel.

Only records and write-offs enter a fingerprint, never heartbeats: those change every round
everywhere and would make every range differ. Liveness travels separately (see
:mod:`atomic_p2p.gossip.membership`: each exchange lists the members whose beat has gone
stalest here).

Byte for byte (docs/protocol.md): ``item = sha256(peer_id || seq as 8 bytes big-endian)[:16]`` read
big-endian; range ``i`` of ``R`` holds the ids whose first 4 bytes, read big-endian, times ``R``
shifted right by 32 equal ``i``; ``fingerprint = sha256(sum as 16 bytes big-endian || count as 8
bytes big-endian)[:8]``; a summary is the ``R`` fingerprints concatenated.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

FINEST = 4096
"""Ranges kept internally; a summary may use any power of two up to this many."""
FINGERPRINT_BYTES = 8
ENTRIES_PER_RANGE = 64
"""Members per range a node aims for when it picks ``R`` for its own summaries."""
_MASK = (1 << 128) - 1


@lru_cache(maxsize=1 << 16)  # a node hashes each record once; the simulator's nodes share the work
def item_hash(raw: bytes, seq: int) -> int:
    return int.from_bytes(hashlib.sha256(raw + seq.to_bytes(8, "big")).digest()[:16], "big")


def range_of(raw: bytes, ranges: int) -> int:
    return (int.from_bytes(raw[:4], "big") * ranges) >> 32


def fingerprint(total: int, count: int) -> bytes:
    return hashlib.sha256(total.to_bytes(16, "big") + count.to_bytes(8, "big")).digest()[:FINGERPRINT_BYTES]


def ranges_for(members: int) -> int:
    """The number of ranges a node of ``members`` members uses: a power of two, about
    :data:`ENTRIES_PER_RANGE` members each, between 1 and :data:`FINEST`."""
    ranges = 1
    while ranges * 2 * ENTRIES_PER_RANGE <= members and ranges < FINEST:
        ranges *= 2
    return ranges


def valid_summary_length(length: int) -> bool:
    ranges, rest = divmod(length, FINGERPRINT_BYTES)
    return not rest and 0 < ranges <= FINEST and ranges & (ranges - 1) == 0


class RangeIndex:
    """Every member of the table by fine range, and each fine range's sum and count of live records."""

    __slots__ = ("_counts", "_items", "_members", "_summaries", "_sums")

    def __init__(self) -> None:
        self._members: dict[int, set[bytes]] = {}
        self._sums = [0] * FINEST
        self._counts = [0] * FINEST
        self._items: dict[bytes, tuple[int, int]] = {}
        """The ``seq`` and hash each member adds to its range now (absent while written off)."""
        self._summaries: dict[int, bytes] = {}
        """Summaries by number of ranges, until the next change."""

    def update(self, raw: bytes, seq: int, written_off: bool) -> None:
        """Record that the table holds ``raw`` at ``seq``; a written-off member adds nothing."""
        fine = (int.from_bytes(raw[:4], "big") * FINEST) >> 32
        members = self._members.get(fine)
        if members is None:
            members = self._members[fine] = set()
        members.add(raw)
        old = self._items.get(raw)
        if (old is None and written_off) or (old is not None and not written_off and old[0] == seq):
            return
        if self._summaries:
            self._summaries.clear()
        if old is not None:
            self._sums[fine] = (self._sums[fine] - old[1]) & _MASK
            self._counts[fine] -= 1
            del self._items[raw]
        if not written_off:
            item = item_hash(raw, seq)
            self._sums[fine] = (self._sums[fine] + item) & _MASK
            self._counts[fine] += 1
            self._items[raw] = (seq, item)

    def discard(self, raw: bytes) -> None:
        self.update(raw, 0, written_off=True)
        self._members.get(range_of(raw, FINEST), set()).discard(raw)

    def summary(self, ranges: int) -> bytes:
        """The fingerprints of ``ranges`` equal ranges, concatenated."""
        cached = self._summaries.get(ranges)
        if cached is not None:
            return cached
        width = FINEST // ranges
        sums, counts = self._sums, self._counts
        out = []
        for start in range(0, FINEST, width):
            total = sum(sums[start : start + width]) & _MASK
            out.append(fingerprint(total, sum(counts[start : start + width])))
        summary = self._summaries[ranges] = b"".join(out)
        return summary

    def differing(self, theirs: bytes) -> list[int]:
        """Ranges (of ``len(theirs) // 8``) whose fingerprints differ from ours."""
        ranges = len(theirs) // FINGERPRINT_BYTES
        ours = self.summary(ranges)
        size = FINGERPRINT_BYTES
        return [
            i for i in range(ranges) if ours[i * size : (i + 1) * size] != theirs[i * size : (i + 1) * size]
        ]

    def members_in(self, ranges: int, which: list[int]) -> list[bytes]:
        """Every member held in the listed ranges (written-off ones too), in a stable order."""
        width = FINEST // ranges
        out: list[bytes] = []
        for index in which:
            for fine in range(index * width, (index + 1) * width):
                out += sorted(self._members.get(fine, ()))
        return out
