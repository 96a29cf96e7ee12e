"""The gateway's pure parts: request bodies, the market field, stop sequences, model names,
API keys and rate limits, error shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atomic_p2p.contract import TaskKind
from atomic_p2p.errors import (
    AuctionError,
    ConfigError,
    DeadlineError,
    NoBidsError,
    RateLimitedError,
    SignatureError,
    UnknownModelError,
)
from atomic_p2p.gateway import Access, load_keys
from atomic_p2p.gateway.catalog import Catalog, Offer, Route
from atomic_p2p.gateway.mapping import (
    DEFAULT_MAX_TOKENS,
    StopScanner,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_market,
)
from atomic_p2p.gateway.responses import error_body, status_of

USER = [{"role": "user", "content": "hi"}]


def test_a_chat_becomes_one_text_prompt_with_the_defaults() -> None:
    call = parse_chat(
        {"model": "auto", "messages": [{"role": "system", "content": "be brief"}, *USER], "temperature": 0}
    )
    assert call.prompt == "system: be brief\nuser: hi\nassistant:"
    assert (call.max_tokens, call.stream, call.stop, call.chat) == (DEFAULT_MAX_TOKENS, False, (), True)


def test_content_parts_of_text_are_joined_and_the_new_max_field_wins() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    call = parse_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": parts}],
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "stop": "x",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert call.prompt == "user: ab\nassistant:"
    assert (call.max_tokens, call.stop, call.stream, call.include_usage) == (7, ("x",), True, True)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "JSON object"),
        ({"messages": USER}, "model is"),
        ({"model": "m", "messages": "hi"}, "messages is"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "role is one of"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
        ({"model": "m", "messages": USER, "n": 3}, "n must be 1"),
        ({"model": "m", "messages": USER, "temperature": 0.2}, "greedily"),
        ({"model": "m", "messages": USER, "top_p": 0.9}, "top_p"),
        ({"model": "m", "messages": USER, "tools": [{"type": "function"}]}, "tools"),
        ({"model": "m", "messages": USER, "logprobs": True}, "logprobs"),
        ({"model": "m", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": USER, "max_tokens": True}, "max_tokens"),
        ({"model": "m", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "m", "messages": USER, "stop": [""]}, "stop sequence"),
        ({"model": "m", "messages": USER, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [{"role": "user", "content": "x" * 100_001}]}, "exceeds"),
    ],
)
def test_bad_chats_are_refused_with_the_field_named(body: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_chat(body)


def test_completions_take_one_text_prompt() -> None:
    assert parse_completion({"model": "m", "prompt": ["abc"]}).prompt == "abc"
    for prompt in ([1, 2, 3], ["a", "b"], None, ""):
        with pytest.raises(ConfigError):
            parse_completion({"model": "m", "prompt": prompt})


def test_embedding_inputs_and_encodings() -> None:
    call = parse_embedding({"model": "m", "input": "one", "encoding_format": "base64"})
    assert call.texts == ("one",) and call.base64
    assert not parse_embedding({"model": "m", "input": ["a", "b"]}).base64
    for body in (
        {"model": "m", "input": [1, 2]},
        {"model": "m", "input": []},
        {"model": "m", "input": "a", "dimensions": 8},
        {"model": "m", "input": "a", "encoding_format": "int8"},
        {"model": "m", "input": ["a"] * 257},
    ):
        with pytest.raises(ConfigError):
            parse_embedding(body)


def test_the_market_field_maps_onto_terms_and_selection() -> None:
    market = parse_market(
        {
            "priority": {"latency": 2, "cost": 1},
            "max_price": 0.01,
            "prefer": ["127.0.0.1:5001"],
            "exclude": ["ABCDEF0123456789"],
            "allow_fallbacks": False,
            "deadline_s": 3,
        }
    )
    assert market.weights == {"latency": 2.0, "cost": 1.0} and market.max_price == 0.01
    assert market.selection.prefer == ("127.0.0.1:5001",) and market.selection.exclude == (
        "abcdef0123456789",
    )
    assert not market.selection.fallback and market.deadline_s == 3.0
    assert parse_market({"priority": "speed"}).weights == "speed"


@pytest.mark.parametrize(
    "market",
    [
        "speed",
        {"priority": "fastest"},
        {"priority": {"speed": 1}},
        {"max_price": -1},
        {"max_price": float("nan")},
        {"prefer": "127.0.0.1:1"},
        {"exclude": ["zz"]},
        {"allow_fallbacks": "no"},
        {"deadline_s": 0},
        {"deadline_s": 10_000},
        {"sort": "price"},
    ],
)
def test_bad_market_fields_are_refused(market: object) -> None:
    with pytest.raises(ConfigError, match="market"):
        parse_market(market)


@pytest.mark.parametrize(
    ("pieces", "stops", "sent", "stopped"),
    [
        (["abc", "def"], (), "abcdef", False),
        (["ab", "cX", "Yd"], ("XY",), "abc", True),
        (["abX"], ("XY",), "abX", False),  # held back, then flushed when the text ends
        (["a", "bc", "de"], ("cd", "b"), "a", True),  # the earliest stop in the text wins
        (["xx", "END", "more"], ("END",), "xx", True),
    ],
)
def test_the_stop_scanner_cuts_at_the_first_stop(
    pieces: list[str], stops: tuple[str, ...], sent: str, stopped: bool
) -> None:
    scanner = StopScanner(stops)
    out = "".join(scanner.feed(piece) for piece in pieces) + scanner.flush()
    assert (out, scanner.stopped) == (sent, stopped)


def _offer(capability: str, model: str, kind: TaskKind, peer: str = "p1", text: bool = True) -> Offer:
    return Offer(capability, model, kind, text, peer, 0.001)


CATALOG = Catalog(
    [
        _offer("generate/text", "small-lm", TaskKind.GENERATION, "p1"),
        _offer("generate/text", "large-lm", TaskKind.GENERATION, "p2"),
        _offer("generate/code", "coder", TaskKind.GENERATION, "p3"),
        _offer("generate/count", "counter", TaskKind.GENERATION, "p4", text=False),
        _offer("embed/text", "embedder", TaskKind.EMBEDDING, "p5"),
    ]
)


def test_model_names_resolve_to_a_capability_and_maybe_a_model() -> None:
    assert CATALOG.resolve("generate/code", TaskKind.GENERATION) == Route("generate/code")
    assert CATALOG.resolve("large-lm", TaskKind.GENERATION) == Route("generate/text", "large-lm")
    assert CATALOG.resolve("auto", TaskKind.GENERATION) == Route("generate/text")  # two models beat one
    assert CATALOG.resolve("auto", TaskKind.EMBEDDING) == Route("embed/text")
    with pytest.raises(UnknownModelError):
        CATALOG.resolve("gpt-4o", TaskKind.GENERATION)
    with pytest.raises(ConfigError, match="not a text generation model"):
        CATALOG.resolve("generate/count", TaskKind.GENERATION)  # token ids only
    with pytest.raises(ConfigError, match="not a text embedding model"):
        CATALOG.resolve("small-lm", TaskKind.EMBEDDING)
    with pytest.raises(UnknownModelError):
        Catalog([]).resolve("auto", TaskKind.GENERATION)


def test_the_model_list_names_capabilities_models_and_auto() -> None:
    listed = {model["id"]: model for model in CATALOG.models()}
    assert set(listed) == {
        *("generate/text", "generate/code", "generate/count", "embed/text"),
        *("small-lm", "large-lm", "coder", "counter", "embedder", "auto"),
    }
    assert listed["generate/text"]["atomic"]["peers"] == 2  # type: ignore[index]
    assert Catalog([]).models() == []


def test_keys_files_and_bearer_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\nsk-alpha-123456  120\n\nsk-beta-654321 # no limit of its own\n")
    keys = load_keys(path)
    assert keys == {"sk-alpha-123456": 120.0, "sk-beta-654321": None}
    access = Access(keys)
    assert access.admit("Bearer sk-beta-654321", "10.0.0.1", 0.0).startswith("key sk-bet")
    for header in (None, "Bearer", "Basic sk-beta-654321", "Bearer sk-gamma-000000"):
        with pytest.raises(SignatureError):
            access.admit(header, "10.0.0.1", 0.0)
    for text in ("", "short\n", "sk-alpha-123456 0\n", "sk-alpha-123456 many\n", "a-key-here 1 2\n"):
        path.write_text(text)
        with pytest.raises(ConfigError):
            load_keys(path)
    with pytest.raises(ConfigError):
        load_keys(tmp_path / "missing")


def test_rate_limits_refill_over_time_per_key() -> None:
    access = Access({"sk-alpha-123456": 2.0, "sk-beta-654321": None}, per_minute=60.0)
    alpha = "Bearer sk-alpha-123456"
    access.admit(alpha, "c", 0.0)
    access.admit(alpha, "c", 0.0)
    with pytest.raises(RateLimitedError) as limited:
        access.admit(alpha, "c", 1.0)
    assert limited.value.retry_after_s == pytest.approx(29.0)  # one token per 30 s
    access.admit("Bearer sk-beta-654321", "c", 1.0)  # another key has its own bucket (60/min)
    access.admit(alpha, "c", 30.0)
    open_access = Access(per_minute=1.0)  # no keys: a bucket per client address
    open_access.admit(None, "10.0.0.1", 0.0)
    open_access.admit(None, "10.0.0.2", 0.0)
    with pytest.raises(RateLimitedError):
        open_access.admit(None, "10.0.0.1", 0.0)
    Access().admit(None, "anyone", 0.0)  # no limit at all


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ConfigError("bad"), 400, "invalid_request"),
        (SignatureError("no key"), 401, "invalid_api_key"),
        (UnknownModelError("none"), 404, "model_not_found"),
        (RateLimitedError("slow down", 3.0), 429, "rate_limit_exceeded"),
        (NoBidsError("nobody"), 503, "no_seller"),
        (AuctionError("all failed"), 503, "no_seller"),
        (DeadlineError("late"), 504, "deadline_exceeded"),
    ],
)
def test_errors_map_to_statuses_in_openai_shape(error: Exception, status: int, code: str) -> None:
    assert status_of(error) == status  # type: ignore[arg-type]
    body = error_body(error)  # type: ignore[arg-type]
    assert body["error"]["code"] == code and body["error"]["message"] == str(error)  # type: ignore[index]


def test_error_messages_are_bounded() -> None:
    body = error_body(AuctionError("x" * 100_000))
    assert len(body["error"]["message"]) < 4100  # type: ignore[index]
