"""Fixtures for tests against one real peer on 127.0.0.1.

``node`` is a peer started from ``node_config`` (the small example peer unless a module overrides
``node_config``), stopped after the test; ``buyer`` is a :class:`HandBuyer` connected to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.node import PeerNode
from peers.examples import example_config
from tests.support.handbuyer import HandBuyer


@pytest.fixture
def node_config(tmp_path: Path) -> PeerConfig:
    return example_config("small", tmp_path)


@pytest.fixture
async def node(node_config: PeerConfig) -> AsyncIterator[PeerNode]:
    async with await PeerNode.start(node_config) as running:
        yield running


@pytest.fixture
async def buyer(node: PeerNode) -> AsyncIterator[HandBuyer]:
    async with HandBuyer(node.address) as client:
        yield client
