"""Prometheus metrics of a real peer and a real requester on loopback (atomic_p2p.metrics).

The registry is per process and these tests share it with every other test of the session, so
each reads a counter before and after what it does and checks the difference.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atomic_p2p import metrics
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.testing import digits_batch
from tests.support.handbuyer import HandBuyer

pytestmark = pytest.mark.integration

CAPABILITY = "classify/digits"


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Deltas:
    """Counter values read now, to compare with later reads."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self._before = {
            (name, tuple(sorted(labels.items()))): value(name, **labels) for name, labels in samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return value(name, **labels) - self._before[(name, tuple(sorted(labels.items())))]


async def test_an_auction_counts_on_both_sides(node: PeerNode) -> None:
    model = next(iter(node.models))
    deltas = Deltas(
        ("atomic_rpc_server_handled_total", {"method": "RequestBids", "code": "OK"}),
        ("atomic_rpc_server_handled_total", {"method": "Execute", "code": "OK"}),
        ("atomic_rpc_client_handled_total", {"method": "RequestBids", "code": "OK"}),
        ("atomic_peer_bids_total", {"model": model}),
        ("atomic_peer_quoted_price_count", {"model": model}),
        ("atomic_peer_execution_seconds_count", {"model": model}),
        ("atomic_peer_auction_results_total", {"model": model, "result": "win"}),
        ("atomic_requester_auction_round_seconds_count", {}),
        ("atomic_requester_bids_received_total", {}),
        ("atomic_requester_quoted_price_count", {}),
        ("atomic_requester_tasks_total", {"outcome": "delivered"}),
        ("atomic_requester_tasks_total", {"outcome": "no_bids"}),
        ("atomic_requester_executions_total", {"code": "OK"}),
        ("atomic_requester_execution_seconds_count", {}),
        ("atomic_requester_no_bids_total", {"kind": "declined", "reason": "unknown_capability"}),
        ("atomic_peer_no_bids_total", {"reason": "unknown_capability"}),
    )
    x, _ = digits_batch(4)
    async with Requester([node.address], evaluator=EvaluatorConfig.greedy()) as requester:
        result = await requester.run(CAPABILITY, {"x": x})
        with pytest.raises(Exception, match="no usable bid"):
            await requester.run("classify/nothing-hosts-this", {"x": x})
        for _ in range(100):  # the WIN notice goes out in the background
            if deltas("atomic_peer_auction_results_total", model=model, result="win"):
                break
            await asyncio.sleep(0.02)
    assert result.winner.model_id == model
    assert deltas("atomic_rpc_server_handled_total", method="RequestBids", code="OK") == 2
    assert deltas("atomic_rpc_server_handled_total", method="Execute", code="OK") == 1
    assert deltas("atomic_rpc_client_handled_total", method="RequestBids", code="OK") == 2
    assert deltas("atomic_peer_bids_total", model=model) == 1
    assert deltas("atomic_peer_quoted_price_count", model=model) == 1
    assert deltas("atomic_peer_execution_seconds_count", model=model) == 1
    assert deltas("atomic_peer_auction_results_total", model=model, result="win") == 1
    assert deltas("atomic_requester_auction_round_seconds_count") == 2
    assert deltas("atomic_requester_bids_received_total") == 1
    assert deltas("atomic_requester_quoted_price_count") == 1
    assert deltas("atomic_requester_tasks_total", outcome="delivered") == 1
    assert deltas("atomic_requester_tasks_total", outcome="no_bids") == 1
    assert deltas("atomic_requester_executions_total", code="OK") == 1
    assert deltas("atomic_requester_execution_seconds_count") == 1
    assert deltas("atomic_requester_no_bids_total", kind="declined", reason="unknown_capability") == 1
    assert deltas("atomic_peer_no_bids_total", reason="unknown_capability") == 1


async def test_refusals_count_under_their_status_code(node: PeerNode, buyer: HandBuyer) -> None:
    deltas = Deltas(
        ("atomic_rpc_server_handled_total", {"method": "Execute", "code": "INVALID_ARGUMENT"}),
        ("atomic_rpc_server_handled_total", {"method": "BidGradient", "code": "INVALID_ARGUMENT"}),
        ("atomic_peer_gradient_updates_total", {"result": "refused", "code": "INVALID_ARGUMENT"}),
        ("atomic_rpc_server_handling_seconds_count", {"method": "Execute"}),
    )
    for method in ("Execute", "BidGradient"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await buyer.raw(method)(b"\xff not a message")
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # gRPC's abort sends the status before the handler's wrapper counts it: wait (bounded) for it
    for _ in range(100):
        if deltas("atomic_rpc_server_handled_total", method="BidGradient", code="INVALID_ARGUMENT"):
            break
        await asyncio.sleep(0.02)
    assert deltas("atomic_rpc_server_handled_total", method="Execute", code="INVALID_ARGUMENT") == 1
    assert deltas("atomic_rpc_server_handled_total", method="BidGradient", code="INVALID_ARGUMENT") == 1
    assert deltas("atomic_peer_gradient_updates_total", result="refused", code="INVALID_ARGUMENT") == 1
    assert deltas("atomic_rpc_server_handling_seconds_count", method="Execute") == 1


async def test_occupancy_is_read_from_the_running_node(node: PeerNode) -> None:
    config = node.config
    # Other tests' nodes may still be up in this process: the gauges sum them, so compare with
    # at least this node's share.
    assert value("atomic_peer_workers") >= config.max_concurrency
    assert value("atomic_peer_queue_capacity") >= config.queue_limit
    assert value("atomic_peer_bid_book_capacity") >= config.max_remembered
    assert value("atomic_gossip_members", state="alive") >= 1  # the node itself
    await node.stop()
    assert metrics.REGISTRY.get_sample_value("atomic_peer_workers") is not None  # still exported


@pytest.fixture
def endpoint() -> Iterator[metrics.MetricsServer]:
    server = metrics.serve(0)
    yield server
    server.close()


def test_the_endpoint_serves_the_exposition_format(endpoint: metrics.MetricsServer) -> None:
    metrics.fallback("execute")
    with urllib.request.urlopen(endpoint.url, timeout=5) as response:
        body = response.read().decode()
    families = {family.name: family for family in text_string_to_metric_families(body)}
    assert families["atomic_requester_fallbacks"].type == "counter"
    assert any(
        sample.labels == {"kind": "execute"} for sample in families["atomic_requester_fallbacks"].samples
    )
    assert families["atomic_requester_auction_round_seconds"].type == "histogram"
    assert families["atomic_gossip_members"].type == "gauge"
    assert families["process_cpu_seconds"].type == "counter"  # the standard process metrics too


def test_labels_never_take_text_from_outside() -> None:
    assert metrics.bounded("unknown_capability", metrics._NO_BID_REASONS) == "unknown_capability"
    assert metrics.bounded("reason_7777", metrics._NO_BID_REASONS) == "other"
    assert metrics.code_name(grpc.StatusCode.UNAVAILABLE) == "UNAVAILABLE"
    assert metrics.code_name(12345) == "other"
