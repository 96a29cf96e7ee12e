"""The OpenAI-compatible gateway over real gRPC peers on 127.0.0.1, spoken to by the official
``openai`` package (streaming and not) and by raw HTTP (the SSE framing, error shapes).

One market for the module: two text generators for ``generate/text`` (``sharp`` wins greedy
auctions, ``dull`` is the runner-up), a slow one reached only by its model id, and an embedder,
all joined by gossip; the gateway's requester knows only the seed's address."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from atomic_p2p.gateway import Access, Gateway
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import BidPolicy, Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.testing import text_embedder_config, text_generator_config
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

CAPABILITY = "generate/text"
# A busy two-core CI box can starve gossip for seconds: peers gossip at the default pace (slow to
# suspect each other) and the gateway's requester pulls often but is slower still to suspect.
PEER_INTERVAL = 1.0
GOSSIP = GossipConfig(interval=0.2, suspicion_mult=25.0)
PROMPT = [{"role": "user", "content": "count with me"}]


@dataclasses.dataclass
class Market:
    sharp: PeerNode
    dull: PeerNode
    slow: PeerNode
    embedder: PeerNode
    requester: Requester
    url: str


def _gossiping(config: PeerConfig, seeds: tuple[str, ...], **fields: Any) -> PeerConfig:
    return dataclasses.replace(config, bootstrap=seeds, gossip_interval_s=PEER_INTERVAL, **fields)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def market(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Market]:
    tmp = tmp_path_factory.mktemp("gateway")
    nodes = [await PeerNode.start(_gossiping(text_generator_config("sharp", tmp, confidence=0.95), ()))]
    seeds = (nodes[0].address,)
    others = [
        _gossiping(text_generator_config("dull", tmp, confidence=0.6), seeds),
        _gossiping(
            text_generator_config("slow", tmp, capability="generate/slow", step_s=0.05),
            seeds,
            max_concurrency=1,
        ),
        _gossiping(text_embedder_config("embedder", tmp, dimensions=8), seeds),
    ]
    try:
        for config in others:
            nodes.append(await PeerNode.start(config))
        requester = Requester(
            bootstrap=list(seeds),
            gossip=GOSSIP,
            evaluator=EvaluatorConfig.greedy(),
            bids=BidPolicy(adaptive_tmax=False),  # every peer's bid counts, however busy the box
            store=tmp / "gateway.db",
        )
        async with requester:
            assert await requester.wait_for_peers(CAPABILITY, 2, timeout=20.0)
            assert await requester.wait_for_peers("embed/text", 1, timeout=20.0)
            assert await requester.wait_for_peers("generate/slow", 1, timeout=20.0)
            async with Gateway(requester, deadline_s=10.0).serving() as url:
                yield Market(*nodes, requester=requester, url=url)
    finally:
        for node in nodes:
            await node.stop(grace=0.5)


@pytest_asyncio.fixture(loop_scope="module")
async def client(market: Market) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=market.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


async def _sdk_text(market: Market, prompt: str, max_tokens: int) -> str:
    """The same purchase through the SDK: what the gateway must answer."""
    return (await market.requester.generate(CAPABILITY, prompt, max_tokens=max_tokens).collect()).text


async def test_models_lists_the_live_capabilities_and_model_ids(client: openai.AsyncOpenAI) -> None:
    names = {model.id async for model in client.models.list()}
    assert {CAPABILITY, "generate/slow", "embed/text", "sharp-lm", "dull-lm", "slow-lm", "auto"} <= names
    listed = await client.models.retrieve("generate/text")
    assert listed.model_extra is not None and listed.model_extra["atomic"]["peers"] == 2
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nobody-has-this")


async def test_a_chat_completion_is_bought_like_the_sdk_buys_it(
    client: openai.AsyncOpenAI, market: Market
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=CAPABILITY, messages=PROMPT, max_tokens=6
    )
    reply = raw.parse()
    expected = await _sdk_text(market, "user: count with me\nassistant:", 6)
    assert reply.choices[0].message.content == expected and len(expected) == 6
    assert reply.choices[0].finish_reason == "length" and reply.object == "chat.completion"
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    # the prompt as the selling peer's own (character) tokenizer counted it, in its signed receipt
    assert reply.usage.prompt_tokens == len("user: count with me\nassistant:")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6
    sold = reply.model_extra["atomic"] if reply.model_extra else {}
    assert sold["peer"] == market.sharp.peer_id.hex == raw.headers["x-atomic-peer"]
    assert sold["model"] == "sharp-lm" == raw.headers["x-atomic-model"]
    assert sold["price"] > 0 and float(raw.headers["x-atomic-price"]) == pytest.approx(sold["price"])
    store = market.requester.memory.store
    assert store is not None
    store.flush()
    logged = {f"{d.request_id}/{d.task_id}" for d in store.recent_decisions(10)}
    assert sold["decision_id"] == raw.headers["x-atomic-decision"] and sold["decision_id"] in logged


async def test_a_streamed_chat_matches_the_whole_answer(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(model="auto", messages=PROMPT, max_tokens=8)
    stream = await client.chat.completions.create(
        model="auto", messages=PROMPT, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["length"]
    assert finishing[0].model_extra and finishing[0].model_extra["atomic"]["model"] == "sharp-lm"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert whole.usage is not None and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens > 0
    assert chunks[0].choices[0].delta.role == "assistant"


async def test_a_completion_keeps_to_the_model_and_the_market_field(
    client: openai.AsyncOpenAI, market: Market
) -> None:
    by_model = await client.completions.create(model="dull-lm", prompt="abc", max_tokens=3)
    assert by_model.choices[0].text == "def" and by_model.object == "text_completion"
    assert by_model.model_extra and by_model.model_extra["atomic"]["model"] == "dull-lm"
    excluded = await client.completions.create(
        model=CAPABILITY,
        prompt="abc",
        max_tokens=3,
        extra_body={"market": {"exclude": [market.sharp.address]}},
    )
    assert excluded.model_extra and excluded.model_extra["atomic"]["peer"] == market.dull.peer_id.hex
    preferred = await client.completions.create(
        model=CAPABILITY,
        prompt="abc",
        max_tokens=3,
        stop=["e"],
        extra_body={"market": {"prefer": [market.dull.peer_id.hex[:12]], "priority": "speed"}},
    )
    assert preferred.choices[0].text == "d" and preferred.choices[0].finish_reason == "stop"
    assert preferred.model_extra and preferred.model_extra["atomic"]["model"] == "dull-lm"


async def test_embeddings_come_from_the_embedding_peer(client: openai.AsyncOpenAI, market: Market) -> None:
    texts = ["hello world", "goodbye"]
    packed = await client.embeddings.create(model="embed/text", input=texts)  # the package asks base64
    plain = await client.embeddings.create(model="embedder-embedder", input=texts, encoding_format="float")
    direct = await market.requester.run("embed/text", text=texts)
    expected = direct.outputs["embedding"].tolist()
    for response in (packed, plain):
        got = [list(item.embedding) for item in response.data]
        assert len(got) == 2 and all(
            row == pytest.approx(want, abs=1e-6) for row, want in zip(got, expected, strict=True)
        )
        assert response.model_extra and response.model_extra["atomic"]["peer"] == market.embedder.peer_id.hex
        assert response.usage.prompt_tokens == len("hello world") + len("goodbye") == direct.input_tokens
    with pytest.raises(openai.BadRequestError, match="not a text generation model"):
        await client.chat.completions.create(model="embed/text", messages=PROMPT)


async def test_the_sse_framing_on_the_wire(market: Market) -> None:
    body = {"model": CAPABILITY, "prompt": "ab", "max_tokens": 4, "stream": True}
    async with (
        httpx.AsyncClient(base_url=market.url) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-atomic-peer"] == market.sharp.peer_id.hex
        raw = (await response.aread()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(event.startswith("data: ") and "\n" not in event for event in events[:-1])
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "cdef"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and "decision_id" in chunks[-1]["atomic"]


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        ({"model": "no-such-model", "messages": PROMPT}, 404, "model_not_found", "no live peer offers"),
        ({"model": CAPABILITY, "messages": PROMPT, "n": 2}, 400, "invalid_request", "n must be 1"),
        ({"model": CAPABILITY, "messages": PROMPT, "temperature": 0.7}, 400, "invalid_request", "greedily"),
        ({"model": CAPABILITY, "messages": []}, 400, "invalid_request", "messages"),
        (
            {"model": CAPABILITY, "messages": PROMPT, "market": {"max_price": 1e-9}},
            503,
            "no_seller",
            "exceeds max_cost",
        ),
        (
            {"model": "slow-lm", "messages": PROMPT, "max_tokens": 60, "market": {"deadline_s": 0.8}},
            504,
            "deadline_exceeded",
            "deadline",
        ),
    ],
)
async def test_errors_come_in_openai_shape(
    market: Market, body: dict[str, Any], status: int, code: str, says: str
) -> None:
    async with httpx.AsyncClient(base_url=market.url) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert (
        error["code"] == code
        and says in error["message"]
        and set(error) == {"message", "type", "param", "code"}
    )


async def test_a_body_that_is_not_json_is_a_400(market: Market) -> None:
    async with httpx.AsyncClient(base_url=market.url) as http:
        response = await http.post(
            "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


async def test_keys_and_rate_limits(market: Market) -> None:
    access = Access({"sk-test-0123456789": 2.0})  # two requests a minute for this key
    async with Gateway(market.requester, access=access).serving() as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-wrong-key", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                await wrong.models.list()
        async with openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="sk-test-0123456789", max_retries=0
        ) as good:
            await good.models.list()
            await good.completions.create(model=CAPABILITY, prompt="a", max_tokens=1)
            with pytest.raises(openai.RateLimitError) as limited:
                await good.models.list()
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]


async def test_a_client_that_disconnects_mid_stream_stops_the_peer(market: Market) -> None:
    (model,) = market.slow.models.values()
    body = {"model": "generate/slow", "prompt": "a", "max_tokens": 60, "stream": True}
    async with (
        httpx.AsyncClient(base_url=market.url) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        before = model.module.calls
    # The response closed after one token: the gateway closes the purchase, the peer's call ends.
    await eventually(lambda: market.slow.workers.load().in_flight == 0, what="the peer's stream slot freed")
    stopped_at = model.module.calls
    await eventually(lambda: model.module.calls == stopped_at, what="no more steps")
    assert stopped_at - before < 20  # far from the 60 tokens ordered (each step takes 50 ms)
