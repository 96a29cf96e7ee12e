"""The bid manager and the decomposer against real peers on loopback.

Three real example nodes (small MLP, CNN, 0-4 specialist) that declare their bids reusable
serve the module; a delaying proxy in front of a real node plays a slow bidder. RequestBids
calls are counted by wrapping the requester's own transport; nothing else is mocked.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import torch

from atomic_p2p.channels import ChannelPool, connect
from atomic_p2p.errors import PreconditionError
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.identity import verify
from atomic_p2p.peer.config import ModelConfig, PeerConfig
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import NoBidKind, Requester
from atomic_p2p.requester.bidpolicy import BidPolicy
from atomic_p2p.requester.decomposer import Node, Request, ShardPolicy
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.requester.transport import BytesTransport, GrpcTransport
from atomic_p2p.testing import digits_batch
from peers.examples import example_config, weights_cache_dir
from tests.support.handbuyer import now_ms

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CAPABILITY = "classify/digits"
REUSE_S = 2.0  # the peers' bid_reuse_ttl_s
GOSSIP = GossipConfig(interval=0.2)
GREEDY = EvaluatorConfig.greedy()
STAGE_MODELS = Path(__file__).resolve().parent / "stage_models.py"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trio(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, PeerNode]]:
    tmp = tmp_path_factory.mktemp("bidding")
    nodes: dict[str, PeerNode] = {}
    try:
        for name in ("small", "large", "specialist"):
            seeds = (nodes["small"].address,) if nodes else ()
            config = example_config(
                name, tmp, bid_reuse_ttl_s=REUSE_S, gossip_interval_s=GOSSIP.interval, bootstrap=seeds
            )
            nodes[name] = await asyncio.wait_for(PeerNode.start(config), timeout=120)
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop(grace=1.0)


def patient(*args: object, **kwargs: object) -> Requester:
    """A requester with a generous bid window: this box is shared, and these tests are not about time."""
    kwargs.setdefault("bid_timeout_s", 3.0)
    return Requester(*args, **kwargs)  # type: ignore[arg-type]


def addresses(nodes: dict[str, PeerNode]) -> list[str]:
    return [node.address for node in nodes.values()]


def node_of(nodes: dict[str, PeerNode], peer_id: object) -> PeerNode:
    return next(node for node in nodes.values() if node.peer_id == peer_id)


class CountingTransport(BytesTransport):
    """gRPC, counting every RequestBids (and Feedback) RPC by address: handed to a Requester as
    its transport."""

    def __init__(self) -> None:
        self.pool = ChannelPool()
        self.calls: Counter[str] = Counter()
        self.notices: Counter[str] = Counter()
        self._grpc = GrpcTransport(self.pool)

    async def send(self, address: str, method: str, request: bytes, timeout_s: float) -> bytes:
        if method == "RequestBids":
            self.calls[address] += 1
        elif method == "Feedback":
            self.notices[address] += 1
        return await self._grpc.send(address, method, request, timeout_s)

    def send_stream(
        self, address: str, method: str, request: bytes, timeout_s: float
    ) -> AsyncIterator[bytes]:
        return self._grpc.send_stream(address, method, request, timeout_s)


@pytest_asyncio.fixture(loop_scope="module")
async def counted() -> AsyncIterator[CountingTransport]:
    transport = CountingTransport()
    yield transport
    await transport.pool.close()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


def bump_record(node: PeerNode) -> int:
    """Re-sign the node's gossip record (as a price or model change would): its seq grows."""
    assert node.gossip is not None
    return node.gossip.membership.update_record(time.time()).seq


class DelayProxy:
    """Forwards every ``atomic.v1.Peer`` call to a real peer, holding RequestBids back ``delay_s``.

    It serves with the peer's own TLS key and certificate (a proxy the peer's operator runs), so
    clients see the peer's identity; it reaches the peer over a channel pinned the same way."""

    def __init__(self, target: PeerNode, delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self.address = ""
        self._server = grpc.aio.server()

    async def __aenter__(self) -> DelayProxy:
        self._channel, _ = await connect(self.target.dial_address)
        methods = ("RequestBids", "Execute", "Feedback", "Gossip")
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._forward(name)) for name in methods}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("atomic.v1.Peer", handlers),)
        )
        assert self.target.tls is not None
        port = self._server.add_secure_port("127.0.0.1:0", self.target.tls.server_credentials())
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._server.stop(None)
        await self._channel.close()

    def _forward(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        call = self._channel.unary_unary(f"/atomic.v1.Peer/{method}")

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if method == "RequestBids" and self.delay_s:
                await asyncio.sleep(self.delay_s)
            try:
                answer: bytes = await call(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                await context.abort(error.code(), error.details() or "")
                raise
            return answer

        return handle


# --- batching -------------------------------------------------------------------------------------


async def test_ready_microtasks_share_one_request_bids_per_peer(
    trio: dict[str, PeerNode], counted: CountingTransport
) -> None:
    x, _ = digits_batch(32)
    inputs = {f"x{i}": x[8 * i : 8 * (i + 1)] for i in range(4)}
    request = Request.graph([Node(f"n{i}", CAPABILITY, {"x": f"inputs.x{i}"}) for i in range(4)], inputs)
    async with patient(addresses(trio), transport=counted) as requester:
        calls = counted.calls
        result = await asyncio.wait_for(requester.submit(request, deadline_s=5.0), timeout=15)
        assert requester.bids.rounds == 1
    assert dict(calls) == {address: 1 for address in addresses(trio)}  # 4 tasks, one call per peer
    for i in range(4):
        task = result.results[f"n{i}"]
        assert {scored.item.peer_id for scored in task.bids} == {node.peer_id for node in trio.values()}
        assert torch.equal(result.outputs[f"n{i}.logits"], task.outputs["logits"])
        expected = node_of(trio, task.winner.peer_id).models[task.winner.model_id].run(inputs[f"x{i}"])
        assert torch.allclose(task.outputs["logits"], expected, atol=1e-5)

    counted.calls.clear()
    async with patient(addresses(trio), bids=BidPolicy(batching=False), transport=counted) as unbatched:
        calls = counted.calls
        await asyncio.wait_for(unbatched.submit(request, deadline_s=5.0), timeout=15)
    assert sum(calls.values()) == 12  # a round per task


async def test_separate_requests_handed_over_in_one_turn_share_rounds(
    trio: dict[str, PeerNode], counted: CountingTransport
) -> None:
    """Six ``run`` calls gathered together: their tasks reach the bid manager in one event-loop
    turn from six callers, and ride one round, one call per peer (not one round each for the
    first ``rounds_in_flight`` of them); each still gets every peer's bid and its own result."""
    x, _ = digits_batch(48)
    batches = [x[8 * i : 8 * (i + 1)] for i in range(6)]
    async with patient(addresses(trio), transport=counted) as requester:
        counted.calls.clear()
        calls = counted.calls
        results = await asyncio.wait_for(
            asyncio.gather(*(requester.run(CAPABILITY, {"x": batch}, deadline_s=5.0) for batch in batches)),
            timeout=30,
        )
        assert requester.bids.rounds == 1
    assert dict(calls) == {address: 1 for address in addresses(trio)}
    for batch, result in zip(batches, results, strict=True):
        assert {scored.item.peer_id for scored in result.bids} == {node.peer_id for node in trio.values()}
        expected = node_of(trio, result.winner.peer_id).models[result.winner.model_id].run(batch)
        assert torch.allclose(result.outputs["logits"], expected, atol=1e-5)


# --- the bid cache --------------------------------------------------------------------------------


async def test_a_second_request_of_the_same_shape_reuses_the_bids(
    trio: dict[str, PeerNode], counted: CountingTransport
) -> None:
    x, _ = digits_batch(16)
    notices = sum(counted.notices.values())
    async with patient(addresses(trio), evaluator=GREEDY, transport=counted) as requester:
        calls = counted.calls
        first = await asyncio.wait_for(
            requester.run(CAPABILITY, {"x": x[:8]}, weights="speed", deadline_s=6.0), timeout=10
        )
        second = await asyncio.wait_for(
            requester.run(CAPABILITY, {"x": x[8:]}, weights="speed", deadline_s=6.0), timeout=10
        )
        assert requester.bids.cache.hits == 1
    assert sum(calls.values()) == 3  # only the first request asked
    # Only the first request's bidders heard a notice: one under the second request's fresh id
    # would name no bid the peer issued (it would be declined).
    assert sum(counted.notices.values()) - notices == 3
    assert not first.cached and second.cached and second.winner.reused and not second.fallbacks
    assert second.winner.digest in {scored.item.digest for scored in first.bids}  # the very bid signed before
    verify(second.receipt, "atomic.v1.ExecuteResult", expected_signer=second.winner.peer_id)
    model = node_of(trio, second.winner.peer_id).models[second.winner.model_id]
    assert torch.allclose(second.outputs["logits"], model.run(x[8:]), atol=1e-5)  # the new inputs' answer


async def test_a_new_record_seq_seen_in_gossip_drops_the_peers_cached_bids(
    trio: dict[str, PeerNode], counted: CountingTransport
) -> None:
    x, _ = digits_batch(8)
    large = trio["large"]
    async with patient(bootstrap=[trio["small"].address], gossip=GOSSIP, transport=counted) as requester:
        assert await requester.wait_for_peers(CAPABILITY, 3, timeout=10)
        counted.calls.clear()
        calls = counted.calls
        await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, deadline_s=6.0), timeout=10)
        assert (
            await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, deadline_s=6.0), timeout=10)
        ).cached
        seq = bump_record(large)
        await until(lambda: requester.discovery.version(large.peer_id) == seq, 5, "gossip brings the new seq")
        specs = (("x", "float32", (8, 64)),)
        live = requester.bids.cache.get(CAPABILITY, "x=8x64", specs, now_ms(), requester.discovery.version)
        assert {bid.peer_id for bid in live} == {trio["small"].peer_id, trio["specialist"].peer_id}
        fresh = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, deadline_s=6.0), timeout=10)
    assert not fresh.cached and sum(calls.values()) == 6


async def test_a_peer_refuses_to_reuse_a_bid_made_under_an_older_record(trio: dict[str, PeerNode]) -> None:
    # Fixed addresses, no gossip: the requester cannot see the records change; the peers can.
    x, _ = digits_batch(8)
    async with patient(addresses(trio), evaluator=GREEDY) as requester:
        await asyncio.wait_for(
            requester.run(CAPABILITY, {"x": x}, weights={"accuracy": 1}, deadline_s=6.0), timeout=10
        )
        bumped = {bump_record(trio[name]) and trio[name].peer_id for name in ("large", "specialist")}
        reused = await asyncio.wait_for(
            requester.run(CAPABILITY, {"x": x}, weights={"accuracy": 1}, deadline_s=6.0), timeout=10
        )
        left = requester.bids.cache.get(CAPABILITY, "x=8x64", (("x", "float32", (8, 64)),), now_ms())
    assert reused.cached and reused.winner.peer_id == trio["small"].peer_id
    assert reused.fallbacks and {attempt.bid.peer_id for attempt in reused.fallbacks} <= bumped
    assert all(isinstance(attempt.error, PreconditionError) for attempt in reused.fallbacks)
    assert all(bid.peer_id not in {a.bid.peer_id for a in reused.fallbacks} for bid in left)  # dropped


# --- deadline: k_min + grace, adaptive tmax -------------------------------------------------------


async def test_a_slow_bidder_does_not_hold_the_auction_past_grace(trio: dict[str, PeerNode]) -> None:
    x, _ = digits_batch(8)
    async with DelayProxy(trio["specialist"], delay_s=3.0) as slow:
        peers = [trio["small"].address, trio["large"].address, slow.address]
        policy = BidPolicy(k_min=2, grace_s=0.05, cache=False)
        async with Requester(peers, bids=policy, bid_timeout_s=4.0) as requester:
            started = time.perf_counter()
            result = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, deadline_s=8.0), timeout=10)
            elapsed = time.perf_counter() - started
    assert elapsed < 2.0 and result.timings.bids_ms < 1500  # not held for the 3 s answer
    assert {scored.item.address for scored in result.bids} == set(peers[:2])
    (late,) = result.no_bids
    assert late.address == slow.address and (late.kind, late.reason) == (NoBidKind.LATE, "GRACE")


async def test_tmax_follows_observed_bid_latency(trio: dict[str, PeerNode]) -> None:
    x, _ = digits_batch(8)
    async with DelayProxy(trio["specialist"]) as proxy:
        peers = [trio["small"].address, trio["large"].address, proxy.address]
        policy = BidPolicy(k_min=0, tmax_floor_s=0.3, cache=False)
        async with Requester(peers, bids=policy, bid_timeout_s=4.0) as requester:
            assert requester.bids.tmax_s(peers) == 4.0  # nobody timed yet: the ceiling
            for _ in range(5):
                await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, deadline_s=10.0), timeout=12)
            learned = requester.bids.tmax_s(peers)
            assert 0.3 <= learned < 1.0  # fast answers: near the floor (this box is shared)
            proxy.delay_s = 3.0
            result = await asyncio.wait_for(requester.run(CAPABILITY, {"x": x}, deadline_s=10.0), timeout=12)
            assert result.timings.bids_ms < 2500  # cut at tmax, not held for the slow answer
            assert requester.bids.tmax_s(peers) > learned  # silence pushed it back up
    (silent,) = result.no_bids
    assert silent.address == proxy.address and (silent.kind, silent.reason) == (NoBidKind.LATE, "TMAX")


# --- graphs and shards ----------------------------------------------------------------------------


async def test_a_pipeline_feeds_one_nodes_output_to_the_next(
    trio: dict[str, PeerNode], tmp_path: Path
) -> None:
    softmax = ModelConfig(
        model_id="softmax",
        capabilities=("calibrate/softmax",),
        factory=f"{STAGE_MODELS}:softmax",
        price_per_example=0.0001,
    )
    config = PeerConfig(
        name="softmax", models=(softmax,), data_dir=tmp_path / "softmax", cache_dir=weights_cache_dir()
    )
    stage = await asyncio.wait_for(PeerNode.start(config), timeout=60)
    x, _ = digits_batch(16)
    request = Request.graph(
        [
            Node("classify", CAPABILITY, {"x": "inputs.x"}),
            Node("probs", "calibrate/softmax", {"x": "classify.logits"}),
        ],
        {"x": x},
        outputs={"probabilities": "probs.probs"},
    )
    try:
        async with patient([*addresses(trio), stage.address]) as requester:
            result = await asyncio.wait_for(requester.submit(request, deadline_s=5.0), timeout=15)
    finally:
        await stage.stop(grace=1.0)
    assert list(result.outputs) == ["probabilities"]
    assert result.results["probs"].winner.peer_id == stage.peer_id
    logits = result.results["classify"].outputs["logits"]
    assert torch.allclose(result.outputs["probabilities"], torch.softmax(logits, dim=-1), atol=1e-6)
    assert result.price == pytest.approx(sum(r.price for r in result.results.values()))


async def test_independent_nodes_execute_at_the_same_time(tmp_path: Path) -> None:
    slow = example_config("small", tmp_path, model_overrides={"extra_latency_ms": 500})
    node = await asyncio.wait_for(PeerNode.start(slow), timeout=60)
    x, _ = digits_batch(16)
    request = Request.graph(
        [Node("a", CAPABILITY, {"x": "inputs.a"}), Node("b", CAPABILITY, {"x": "inputs.b"})],
        {"a": x[:8], "b": x[8:]},
    )
    try:
        async with Requester([node.address]) as requester:
            result = await asyncio.wait_for(requester.submit(request, deadline_s=8.0), timeout=15)
    finally:
        await node.stop(grace=1.0)
    executions = [r.timings.execute_ms for r in result.results.values()]
    assert min(executions) >= 500
    assert result.total_ms < sum(executions) - 250  # the two 500 ms calls overlapped


async def test_a_batch_over_max_batch_is_sharded_and_combined_in_order(
    trio: dict[str, PeerNode], counted: CountingTransport
) -> None:
    small = trio["small"]
    x, _ = digits_batch(300)
    async with patient([small.address], evaluator=GREEDY, transport=counted) as requester:
        await asyncio.wait_for(
            requester.run(CAPABILITY, {"x": x[:8]}, deadline_s=6.0), timeout=10
        )  # learns max_batch 256
        counted.calls.clear()
        calls = counted.calls
        result = await asyncio.wait_for(
            requester.submit(Request.single(CAPABILITY, {"x": x}), deadline_s=6.0), timeout=15
        )
    assert result.shards == 2 and list(result.results) == ["task#0", "task#1"]
    assert [r.outputs["logits"].shape[0] for r in result.results.values()] == [150, 150]
    assert sum(calls.values()) == 1  # both shards in one call
    unsharded = small.models["digits-small"].run(x)
    assert torch.allclose(result.outputs["logits"], unsharded, atol=1e-5)


async def test_shards_spread_over_peers_by_their_advertised_limits(trio: dict[str, PeerNode]) -> None:
    x, _ = digits_batch(200)
    async with patient(bootstrap=[trio["small"].address], gossip=GOSSIP) as requester:
        assert await requester.wait_for_peers(CAPABILITY, 3, timeout=10)
        # The third-largest max_batch (large's 128) lets all three compete for every shard.
        request = Request.single(CAPABILITY, {"x": x})
        result = await asyncio.wait_for(
            requester.submit(request, shard=ShardPolicy(min_candidates=3), deadline_s=8.0), timeout=15
        )
    assert result.shards == 2
    parts = []
    for shard, task in zip(result.graph.shards, result.results.values(), strict=True):
        assert len(task.bids) == 3  # every peer could take the shard
        model = node_of(trio, task.winner.peer_id).models[task.winner.model_id]
        parts.append(model.run(x[shard.start : shard.stop]))
    assert torch.allclose(result.outputs["logits"], torch.cat(parts), atol=1e-5)
