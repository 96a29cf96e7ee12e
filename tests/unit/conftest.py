"""Fixtures the in-memory market tests share: a fake clock that jumps whenever every task waits on
it, and an in-memory network of sellers on that clock (closed after the test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from atomic_p2p.testing import FakeClock, InMemoryNetwork


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(autojump=True)


@pytest.fixture
def network(clock: FakeClock) -> Iterator[InMemoryNetwork]:
    network = InMemoryNetwork(clock)
    yield network
    network.close()
