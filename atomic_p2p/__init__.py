"""atomic-p2p: a peer-to-peer market for model inference.

Peers host PyTorch models and sell their execution through signed sealed-bid auctions over gRPC;
requesters buy it one microtask at a time. See README.md and docs/.

The heavy parts (torch, grpc) load on first use of the names that need them, so importing the
package, or running ``atomic --help``, stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from atomic_p2p.errors import (
    AtomicError,
    AuctionError,
    ConfigError,
    NoBidsError,
    ProtocolError,
    SignatureError,
    TensorError,
)
from atomic_p2p.identity import Envelope, Identity, PeerId

if TYPE_CHECKING:
    from atomic_p2p.peer import PeerConfig, PeerNode
    from atomic_p2p.requester import BidInfo, GraphResult, Node, Request, Requester, Result

_LAZY = {
    "BidInfo": "atomic_p2p.requester",
    "GraphResult": "atomic_p2p.requester",
    "Node": "atomic_p2p.requester",
    "PeerConfig": "atomic_p2p.peer",
    "PeerNode": "atomic_p2p.peer",
    "Request": "atomic_p2p.requester",
    "Requester": "atomic_p2p.requester",
    "Result": "atomic_p2p.requester",
}

__all__ = [
    "AtomicError",
    "AuctionError",
    "BidInfo",
    "ConfigError",
    "Envelope",
    "GraphResult",
    "Identity",
    "NoBidsError",
    "Node",
    "PeerConfig",
    "PeerId",
    "PeerNode",
    "ProtocolError",
    "Request",
    "Requester",
    "Result",
    "SignatureError",
    "TensorError",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'atomic_p2p' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
