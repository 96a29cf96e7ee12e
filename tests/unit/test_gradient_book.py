"""GradientBook: what a peer remembers of its gradient-mode bids is bounded in entries and bytes,
expires with the bid, and takes one gradient per bid."""

from __future__ import annotations

import pytest
import torch

from atomic_p2p.errors import PreconditionError, ReplayError
from atomic_p2p.peer.gradients import GradientBook

RID = bytes(16)


def test_inputs_are_kept_until_the_bid_expires() -> None:
    book = GradientBook(ttl_ms=1000, capacity=10)
    assert book.remember(RID, "t", torch.ones(4, 2), now_ms=0)
    assert torch.equal(book.inputs(RID, "t", now_ms=999), torch.ones(4, 2))
    with pytest.raises(PreconditionError, match="never served"):
        book.inputs(RID, "t", now_ms=1000)
    assert book.bytes_held == 0


def test_one_gradient_per_bid() -> None:
    book = GradientBook(ttl_ms=1000, capacity=10)
    book.remember(RID, "t", torch.ones(4, 2), now_ms=0)
    book.applied(RID, "t", now_ms=1)
    with pytest.raises(ReplayError):
        book.inputs(RID, "t", now_ms=2)


def test_entries_and_bytes_are_bounded() -> None:
    book = GradientBook(ttl_ms=1000, capacity=2, max_bytes=64)
    assert book.remember(RID, "a", torch.zeros(4, 2), now_ms=0)  # 32 bytes
    assert not book.remember(RID, "b", torch.zeros(4, 3), now_ms=0)  # 48 more: over 64
    assert book.remember(RID, "c", torch.zeros(2, 2), now_ms=0)
    assert not book.remember(RID, "d", torch.zeros(1, 1), now_ms=0)  # two entries already
    assert book.bytes_held == 48
    assert book.remember(RID, "e", torch.zeros(4, 3), now_ms=1000)  # the first ones expired
    assert book.bytes_held == 48
