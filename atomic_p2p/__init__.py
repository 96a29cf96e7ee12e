"""atomic-p2p: a peer-to-peer market for model inference.

Peers host PyTorch models and sell their execution through signed sealed-bid auctions over gRPC;
requesters buy it one microtask at a time. See README.md and docs/.
"""

from atomic_p2p.errors import AtomicError
from atomic_p2p.identity import Envelope, Identity, PeerId

__all__ = [
    "AtomicError",
    "Envelope",
    "Identity",
    "PeerId",
]

__version__ = "0.1.0"
