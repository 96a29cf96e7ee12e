"""The public face stays small, sorted and honest."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import atomic_p2p

# What each public module promises, written out: a name added or dropped is a decision, and
# this is where it shows up in review. Sorted as ruff sorts __all__ (CONSTANTS, Classes, functions).
PUBLIC = {
    "atomic_p2p.gateway": ["Access", "Gateway", "load_keys"],
    "atomic_p2p": [
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
    ],
    "atomic_p2p.requester": [
        "PROFILES",
        "Attempt",
        "BidInfo",
        "BidPolicy",
        "Excluded",
        "ExcludedBid",
        "ExecutionPolicy",
        "FromInput",
        "FromNode",
        "GeneratedTokens",
        "Generation",
        "GenerationPart",
        "GenerationResult",
        "GradientMarket",
        "GradientRound",
        "GraphResult",
        "NoBidInfo",
        "NoBidKind",
        "Node",
        "PeerRound",
        "Priority",
        "Ranking",
        "Request",
        "Requester",
        "Result",
        "Scored",
        "ScoredBid",
        "Selection",
        "ShardPolicy",
        "SpotCheckConfig",
        "Timings",
        "Weights",
        "resolve_weights",
        "score",
    ],
    "atomic_p2p.testing": [
        "FakeClock",
        "GossipSimulator",
        "InMemoryNetwork",
        "InMemoryPeer",
        "InMemoryTransport",
        "PeerProcess",
        "count_up_lm",
        "digits_batch",
        "generator_config",
        "linear_classifier",
        "make_bid",
        "peer_command",
        "peer_identity",
        "peer_processes",
        "seller_config",
        "text_classifier",
        "text_embedder",
        "text_embedder_config",
        "text_generator",
        "text_generator_config",
        "text_seller_config",
    ],
}


def isort_order(name: str) -> tuple[int, str]:
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_exactly_the_promised_names_sorted_and_unique(module: str) -> None:
    assert importlib.import_module(module).__all__ == PUBLIC[module]
    assert PUBLIC[module] == sorted(set(PUBLIC[module]), key=isort_order)


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_resolves(module: str) -> None:
    imported = importlib.import_module(module)
    assert [name for name in PUBLIC[module] if getattr(imported, name, None) is None] == []


def test_public_names_are_the_real_classes() -> None:
    from atomic_p2p.peer import PeerNode
    from atomic_p2p.requester import Requester

    assert atomic_p2p.Requester is Requester
    assert atomic_p2p.PeerNode is PeerNode


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        atomic_p2p.DoesNotExist  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "DoesNotExist" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_does_not_load_torch() -> None:
    code = "import sys, atomic_p2p; assert 'torch' not in sys.modules, 'torch loaded eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
