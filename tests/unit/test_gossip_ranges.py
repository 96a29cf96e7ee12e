"""Range fingerprints: incremental sums equal a from-scratch computation, and a difference is found."""

from __future__ import annotations

import hashlib
import random

from atomic_p2p.gossip.ranges import (
    FINEST,
    RangeIndex,
    fingerprint,
    range_of,
    ranges_for,
    valid_summary_length,
)


def from_scratch(held: dict[bytes, int], ranges: int) -> bytes:
    """The definition in docs/protocol.md, written out the slow way."""
    sums = [0] * ranges
    counts = [0] * ranges
    for raw, seq in held.items():
        index = (int.from_bytes(raw[:4], "big") * ranges) >> 32
        sums[index] += int.from_bytes(hashlib.sha256(raw + seq.to_bytes(8, "big")).digest()[:16], "big")
        counts[index] += 1
    return b"".join(
        hashlib.sha256((s % 2**128).to_bytes(16, "big") + c.to_bytes(8, "big")).digest()[:8]
        for s, c in zip(sums, counts, strict=True)
    )


def test_incremental_fingerprints_equal_the_definition_through_updates_write_offs_and_removals() -> None:
    rng = random.Random(1)
    index = RangeIndex()
    held: dict[bytes, int] = {}
    ids = [rng.randbytes(32) for _ in range(300)]
    for step in range(2000):
        raw = rng.choice(ids)
        action = rng.random()
        if action < 0.6:
            seq = rng.randrange(1, 2**48)
            index.update(raw, seq, written_off=False)
            held[raw] = seq
        elif action < 0.8:
            index.update(raw, rng.randrange(2**48), written_off=True)
            held.pop(raw, None)
        else:
            index.discard(raw)
            held.pop(raw, None)
        if step % 250 == 0:
            for ranges in (1, 2, 64, FINEST):
                assert index.summary(ranges) == from_scratch(held, ranges)


def test_one_changed_record_shows_up_in_exactly_its_range() -> None:
    rng = random.Random(2)
    mine, theirs = RangeIndex(), RangeIndex()
    ids = [rng.randbytes(32) for _ in range(500)]
    for raw in ids:
        mine.update(raw, 5, written_off=False)
        theirs.update(raw, 5, written_off=False)
    assert mine.differing(theirs.summary(16)) == []
    theirs.update(ids[42], 6, written_off=False)
    assert mine.differing(theirs.summary(16)) == [range_of(ids[42], 16)]
    assert ids[42] in mine.members_in(16, [range_of(ids[42], 16)])
    theirs.update(ids[42], 6, written_off=True)  # written off: out of its fingerprint, still listed
    assert ids[42] in theirs.members_in(16, [range_of(ids[42], 16)])
    mine.update(ids[42], 5, written_off=True)
    assert mine.differing(theirs.summary(16)) == []


def test_the_number_of_ranges_is_a_power_of_two_that_grows_with_the_table() -> None:
    assert ranges_for(0) == ranges_for(100) == 1
    assert ranges_for(1000) == 8 and ranges_for(10_000) == 128
    assert ranges_for(10**9) == FINEST
    assert valid_summary_length(8) and valid_summary_length(8 * FINEST)
    assert not any(valid_summary_length(n) for n in (0, 4, 24, 8 * 2 * FINEST))
    assert fingerprint(0, 0) == hashlib.sha256(bytes(24)).digest()[:8]


def test_the_documented_test_vectors() -> None:
    """docs/protocol.md section 12, byte for byte."""
    index = RangeIndex()
    assert index.summary(1).hex() == "9d908ecfb6b256de"
    index.update(bytes([1]) * 32, 1_700_000_000_000, written_off=False)
    index.update(bytes([0x80]) * 32, 5, written_off=False)
    assert index.summary(1).hex() == "b8b5fafecdcbfcdc"
    assert index.summary(2).hex() == "2a547a9dc819791b" + "d778f357128e1bb9"
