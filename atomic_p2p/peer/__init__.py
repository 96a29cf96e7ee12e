"""The peer node: hosts models, bids for microtasks and executes won bids (``atomic-peer``)."""

from atomic_p2p.peer.config import ModelConfig, PeerConfig, load_config, load_configs
from atomic_p2p.peer.models import BuiltModel, HostedModel
from atomic_p2p.peer.node import PeerNode

__all__ = [
    "BuiltModel",
    "HostedModel",
    "ModelConfig",
    "PeerConfig",
    "PeerNode",
    "load_config",
    "load_configs",
]
