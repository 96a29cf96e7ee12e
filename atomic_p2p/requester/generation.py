"""Streamed generation with fallback: tokens as peers produce them, continued on the runner-up.

How this works (docs/protocol.md section 10)
--------------------------------------------
:meth:`atomic_p2p.requester.Requester.generate` auctions the prompt like any task, then
:class:`GenerationWalk` walks the ranking best first. Each attempt signs an ExecuteOrder with
``max_tokens`` (the budget left) and ``prefix_tokens`` (every token received so far) and opens
ExecuteStream on that bid. Tokens are handed to the caller as they arrive (:class:`GeneratedTokens`,
naming the peer); the stream must end with a signed ExecuteResult whose digest covers exactly the
tokens that peer sent, and a peer may not send more than it was ordered.

When an attempt fails (an error, no token within the call timeout, the stream cut, a bad receipt)
the tokens it sent stay in the output as an unverified part, and the next bid continues after them
with the budget left, within the deadline. The final :class:`GenerationResult` lists every part:
the peer, its model, the token range, and its signed receipt (None for the unverified parts of
peers that failed). Generation succeeds only when the last attempt ends with a verified result.

A text prompt (``Payload.texts``) goes the same way by text, since peers have different
vocabularies: each chunk carries its text, a continuation's order names the text so far
(``prefix_text``, UTF-8) instead of tokens, and each peer's receipt covers the text it produced as
one text under the texts digest. Parts then say which peer produced which text; their token ids
are each peer's own and only count the budget.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from atomic_p2p import metrics
from atomic_p2p.clock import SYSTEM_CLOCK, Clock, wait_for
from atomic_p2p.errors import AtomicError, AuctionError, BidExpiredError, DeadlineError, ProtocolError
from atomic_p2p.identity import Envelope, Identity, PeerId
from atomic_p2p.protocol.messages import ExecuteCall, TokenChunk
from atomic_p2p.protocol.streaming import tokens_tensor
from atomic_p2p.requester.execution import ExecutionPolicy, Payload
from atomic_p2p.requester.messages import check_result, sign_order
from atomic_p2p.requester.transport import Transport, status_name
from atomic_p2p.requester.types import Attempt, BidInfo, receipt_input_tokens

logger = logging.getLogger(__name__)

# The most characters one token may add to a text generation: far above what any tokenizer's piece
# decodes to, and it bounds what a peer can push through the stream per token it is paid for.
MAX_CHARACTERS_PER_TOKEN = 256


@dataclass(frozen=True, slots=True)
class GeneratedTokens:
    """Tokens as they arrived, and who produced them (not yet covered by a verified result)."""

    tokens: tuple[int, ...]
    peer_id: PeerId
    address: str
    model_id: str
    text: str = ""  # a text prompt's generation: the tokens decoded by the peer's tokenizer


@dataclass(frozen=True, slots=True)
class GenerationPart:
    """The tokens ``output[start : start + len(tokens)]`` and the peer that produced them."""

    bid: BidInfo
    start: int
    tokens: tuple[int, ...]
    receipt: Envelope | None  # the signed ExecuteResult; None: the peer failed, the part is unverified
    cost: float
    text: str = ""  # a text prompt's generation: the text this peer produced

    @property
    def verified(self) -> bool:
        return self.receipt is not None

    @property
    def input_tokens(self) -> int:
        """The prompt's tokens by this part's peer's tokenizer, from its receipt (0: unverified)."""
        return 0 if self.receipt is None else receipt_input_tokens(self.receipt)


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A finished generation: every token after the prompt, per part who produced it, and the price."""

    request_id: bytes
    task_id: str
    capability: str
    tokens: tuple[int, ...]
    parts: tuple[GenerationPart, ...]
    attempts: tuple[Attempt, ...]
    price: float  # what the verified parts charged
    text: str = ""  # a text prompt's generation: the whole text after the prompt, every part's joined

    @property
    def prompt_tokens(self) -> int:
        """The prompt's tokens as the peer that finished counted them (its signed receipt; a
        continuation's prefix not counted); 0 for a prompt of token ids with no tokenizer."""
        verified = [part for part in self.parts if part.verified]
        return verified[-1].input_tokens if verified else 0


class Generation:
    """``async for chunk in generation`` yields :class:`GeneratedTokens` as they arrive; then
    :attr:`result` holds the :class:`GenerationResult`. ``await generation.collect()`` does both.
    To stop early, :meth:`aclose` it, or use it as ``async with``: closing cancels the stream and
    the peer stops generating (``break`` alone leaves the call open until it is collected)."""

    def __init__(self, walk: AsyncGenerator[GeneratedTokens | GenerationResult, None]) -> None:
        self._walk = walk
        self._result: GenerationResult | None = None

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> GeneratedTokens:
        if self._result is not None:
            raise StopAsyncIteration
        item = await anext(self._walk)
        if isinstance(item, GenerationResult):
            self._result = item
            await self._walk.aclose()
            raise StopAsyncIteration
        return item

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise RuntimeError("the generation has not finished; iterate it to the end first")
        return self._result

    @property
    def text(self) -> str:
        """The whole generated text (a text prompt), once finished."""
        return self.result.text

    async def collect(self) -> GenerationResult:
        async for _ in self:
            pass
        return self.result

    async def aclose(self) -> None:
        await self._walk.aclose()

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class GenerationWalk:
    """The fallback walk for one generation (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity,
        policy: ExecutionPolicy,
        clock: Clock = SYSTEM_CLOCK,
        on_attempt: Callable[[Attempt], None] = lambda attempt: None,
    ) -> None:
        self._transport = transport
        self._identity = identity
        self._policy = policy
        self._clock = clock
        self._on_attempt = on_attempt  # hears every attempt as it ends (profiles learn from it)

    async def run(
        self,
        request_id: bytes,
        task_id: str,
        capability: str,
        ranked: Sequence[BidInfo],
        prompt: Payload,
        max_tokens: int,
        deadline: float,
    ) -> AsyncGenerator[GeneratedTokens | GenerationResult, None]:
        tokens: list[int] = []
        text = ""
        parts: list[GenerationPart] = []
        attempts: list[Attempt] = []
        walk_started, first = self._clock.monotonic(), True
        for bid in ranked:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0 or len(tokens) >= max_tokens:
                break
            if bid.valid_until_ms <= self._clock.wall_ms():
                attempts.append(Attempt(bid, 0.0, BidExpiredError("the bid expired before its turn")))
                self._on_attempt(attempts[-1])
                continue
            if attempts:
                metrics.fallback("generate")
            started = self._clock.monotonic()
            produced: list[int] = []
            produced_text: list[str] = []
            receipt: Envelope | None = None
            cost = 0.0
            try:
                stream = self._attempt(
                    bid.request_id or request_id, bid, prompt, tokens, text, max_tokens, remaining
                )
                async with aclosing(stream) as pieces:
                    async for piece in pieces:
                        if isinstance(piece, GeneratedTokens):
                            if first:
                                metrics.first_token(self._clock.monotonic() - walk_started)
                                first = False
                            produced.extend(piece.tokens)
                            produced_text.append(piece.text)
                            yield piece
                        else:
                            receipt, cost = piece
            except AtomicError as error:
                logger.warning(
                    "generation on %s failed after %d tokens: %s", bid.address, len(produced), error
                )
                attempts.append(Attempt(bid, (self._clock.monotonic() - started) * 1000, error))
            else:
                attempts.append(Attempt(bid, (self._clock.monotonic() - started) * 1000))
            self._on_attempt(attempts[-1])
            if produced or receipt is not None:
                part_text = "".join(produced_text)
                parts.append(GenerationPart(bid, len(tokens), tuple(produced), receipt, cost, part_text))
                tokens.extend(produced)
                text += part_text
            if receipt is not None:
                price = sum(part.cost for part in parts)
                done = GenerationResult(
                    request_id, task_id, capability, tuple(tokens), tuple(parts), tuple(attempts), price, text
                )
                yield done
                return
        raise AuctionError(_failed_message(capability, attempts, len(tokens)))

    async def _attempt(
        self,
        request_id: bytes,
        bid: BidInfo,
        prompt: Payload,
        prefix: Sequence[int],
        prefix_text: str,
        max_tokens: int,
        remaining_s: float,
    ) -> AsyncGenerator[GeneratedTokens | tuple[Envelope, float], None]:
        left = max_tokens - len(prefix)
        by_text = bool(prompt.texts)  # a text prompt continues by text (module docstring)
        stall_s = self._policy.call_timeout(bid, remaining_s)  # the longest wait for one message
        now = self._clock.wall_ms()
        order = sign_order(
            self._identity,
            request_id,
            bid,
            prompt.digest,
            now,
            now + int(remaining_s * 1000),
            max_tokens=left,
            prefix_tokens=() if by_text else tuple(prefix),
            prefix_text=prefix_text.encode() if by_text else b"",
        )
        produced: list[int] = []
        produced_text: list[str] = []
        call = ExecuteCall(order, bid.envelope, prompt.inputs, prompt.texts)
        async with aclosing(self._transport.execute_stream(bid.address, call, remaining_s)) as stream:
            while True:
                try:
                    chunk = await wait_for(self._clock, anext(stream), stall_s)
                except StopAsyncIteration:
                    raise ProtocolError("the stream ended without a signed result") from None
                except TimeoutError:
                    raise DeadlineError(f"no token from {bid.address} within {stall_s:.2f} s") from None
                if isinstance(chunk, TokenChunk):
                    _check_chunk(chunk, len(produced), left)
                    produced.extend(chunk.tokens)
                    produced_text.append(chunk.text)
                    yield GeneratedTokens(chunk.tokens, bid.peer_id, bid.address, bid.model_id, chunk.text)
                elif isinstance(chunk, Envelope):
                    outputs = [] if by_text else [tokens_tensor(produced)]
                    texts = ["".join(produced_text).encode()] if by_text else []
                    checked = await self._clock.run_blocking(
                        check_result, chunk, outputs, request_id, bid, texts
                    )
                    yield chunk, checked.cost_charged
                    return
                else:
                    raise ProtocolError("a generation stream carried a tensor slice")


def _check_chunk(chunk: TokenChunk, sent: int, left: int) -> None:
    """A ProtocolError for a chunk past the tokens ordered, or with more text than its tokens allow."""
    if sent + len(chunk.tokens) > left:
        raise ProtocolError(f"the peer sent more than the {left} tokens ordered")
    if len(chunk.text) > MAX_CHARACTERS_PER_TOKEN * len(chunk.tokens):
        raise ProtocolError(f"the peer sent {len(chunk.text)} characters for {len(chunk.tokens)} tokens")


def _failed_message(capability: str, attempts: Sequence[Attempt], produced: int) -> str:
    lines = [f"generation for {capability!r} did not finish ({produced} tokens received):"]
    for attempt in attempts:
        bid, error = attempt.bid, attempt.error
        lines.append(
            f"  {bid.address} ({bid.peer_id.short}, {bid.model_id}) after {attempt.elapsed_ms:.0f} ms: "
            f"[{status_name(error) if error else 'OK'}] {error}"
        )
    return "\n".join(lines)
