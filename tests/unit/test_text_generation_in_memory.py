"""Text generation on the in-memory network: a text prompt tokenised by each peer's own tokenizer,
streamed as text, and continued by text on a runner-up with a different vocabulary
(docs/protocol.md section 10)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_p2p.errors import AuctionError, ProtocolError
from atomic_p2p.identity import Identity
from atomic_p2p.peer.text import CharTokenizer, WordTokenizer
from atomic_p2p.peer.textgen import TextPieces, text_prompt
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import ExecuteResult
from atomic_p2p.requester import BidPolicy, Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.tensors import DEFAULT_TEXT_LIMITS, TextLimits, digest
from atomic_p2p.testing import FakeClock, InMemoryNetwork, InMemoryPeer, text_generator_config

CAPABILITY = "generate/text"
WORDS = ("abcde", "x", "y", "z")


def buyer(network: InMemoryNetwork, clock: FakeClock, *peers: InMemoryPeer) -> Requester:
    return Requester(
        [peer.address for peer in peers],
        transport=network.transport(),
        clock=clock,
        evaluator=EvaluatorConfig.greedy(),
        bids=BidPolicy(k_min=0, adaptive_tmax=False, cache=False, top_m=0),
        seed=0,
    )


def signed_text(receipt: object, identity: Identity) -> ExecuteResult:
    assert receipt is not None
    _, result = codec.open_signed(receipt, ExecuteResult, expected_signer=identity.peer_id)  # type: ignore[arg-type]
    return result


async def test_a_text_prompt_streams_text_and_the_receipt_covers_it(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peer = network.add_peer(text_generator_config("chars", tmp_path, tokenizer="char"))
    async with buyer(network, clock, peer) as requester:
        generation = requester.generate(CAPABILITY, "abc", max_tokens=4)
        chunks = [chunk async for chunk in generation]
    assert [chunk.text for chunk in chunks] == ["d", "e", "f", "g"]
    assert generation.text == "defg"
    (part,) = generation.result.parts
    assert part.text == "defg" and part.verified
    assert signed_text(part.receipt, peer.identity).outputs_digest == digest((), (b"defg",))


async def test_a_winner_that_dies_is_continued_by_text_on_another_vocabulary(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    # The favourite counts characters and breaks on 5 tokens: after "abc" it produces "de". The
    # runner-up counts words: "abc" + "de" is its word "abcde", after which come x, y, z.
    winner = network.add_peer(
        text_generator_config("chars", tmp_path, tokenizer="char", confidence=0.95, fail_at_length=5)
    )
    runner_up = network.add_peer(
        text_generator_config("words", tmp_path, tokenizer="word", words=WORDS, confidence=0.6)
    )
    async with buyer(network, clock, winner, runner_up) as requester:
        result = await requester.generate(CAPABILITY, "abc", max_tokens=5, deadline_s=5.0).collect()
    assert result.text == "de x y z"
    first, second = result.parts
    assert (first.bid.address, first.text, first.verified) == (winner.address, "de", False)
    assert (second.bid.address, second.text, second.verified) == (runner_up.address, " x y z", True)
    assert (first.bid.model_id, second.bid.model_id) == ("chars-lm", "words-lm")
    # The runner-up's receipt covers only its own text, as one text under the texts digest.
    assert signed_text(second.receipt, runner_up.identity).outputs_digest == digest((), (b" x y z",))
    assert [attempt.ok for attempt in result.attempts] == [False, True]


async def test_a_prompt_over_a_peers_token_limit_is_declined(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    short = network.add_peer(text_generator_config("short", tmp_path, tokenizer="char", max_input_tokens=4))
    roomy = network.add_peer(
        text_generator_config("roomy", tmp_path, tokenizer="word", words=WORDS, confidence=0.5)
    )
    async with buyer(network, clock, short, roomy) as requester:
        result = await requester.generate(CAPABILITY, "abcde abcde", max_tokens=1).collect()
    (part,) = result.parts
    assert part.bid.address == roomy.address and result.text == " x"


async def test_a_peer_whose_text_outgrows_its_tokens_is_cut_off(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    # After "a" comes a 300-letter word: more text than one token may carry to the requester.
    peer = network.add_peer(
        text_generator_config("wordy", tmp_path, tokenizer="word", words=("a", "x" * 300))
    )
    async with buyer(network, clock, peer) as requester:
        with pytest.raises(AuctionError, match="301 characters for 1 tokens"):
            await requester.generate(CAPABILITY, "a", max_tokens=1).collect()


def test_a_prefix_that_is_not_utf8_is_refused_before_any_work(tmp_path: Path) -> None:
    from atomic_p2p.peer.models import HostedModel

    config = text_generator_config("chars", tmp_path, tokenizer="char")
    (model_config,) = config.models
    model = HostedModel.load(model_config, tmp_path)
    with pytest.raises(ProtocolError, match="not valid UTF-8") as refused:
        text_prompt(model, ("abc",), b"\xff\xfe", DEFAULT_TEXT_LIMITS)
    assert refused.value.code.name == "INVALID_ARGUMENT"
    with pytest.raises(ProtocolError, match="exceeds 4"):
        text_prompt(model, ("abc",), b"defgh", TextLimits(max_text_bytes=4))
    assert text_prompt(model, ("abc",), "dé".encode(), DEFAULT_TEXT_LIMITS).tolist() == [[2, 3, 4, 5, 1]]


def test_pieces_are_what_each_token_adds_to_the_decoded_text() -> None:
    tokenizer = CharTokenizer("ab")
    pieces = TextPieces(tokenizer, [2])
    assert [pieces.add(3), pieces.add(2)] == ["b", "a"]
    assert pieces.text == "ba"


@given(
    context=st.lists(st.integers(0, 6), max_size=12),
    tokens=st.lists(st.integers(0, 6), min_size=1, max_size=12),
    words=st.booleans(),
)
def test_pieces_decoded_a_few_tokens_at_a_time_join_to_the_whole_decoded_text(
    context: list[int], tokens: list[int], words: bool
) -> None:
    tokenizer = WordTokenizer(["the", "cat", "sat", "on"]) if words else CharTokenizer("abc d")
    pieces = TextPieces(tokenizer, context)
    shown = [pieces.add(token) for token in tokens]
    whole, before = tokenizer.decode(context + tokens), tokenizer.decode(context)
    assert "".join(shown) == pieces.text == whole[len(before) :]


async def test_a_prefix_that_is_not_utf8_is_invalid_argument_over_the_network(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    from tests.unit.test_seller_text_stream import text_order

    peer = network.add_peer(text_generator_config("chars", tmp_path, tokenizer="char"))
    call = text_order(peer.seller, b"abc", max_tokens=2, prefix_text=b"ab\xc3")
    stream = network.transport().execute_stream(peer.address, call, 5.0)
    with pytest.raises(ProtocolError, match="not valid UTF-8") as refused:
        await anext(stream)
    assert refused.value.code.name == "INVALID_ARGUMENT"
    assert peer.workers.load().in_flight == 0
