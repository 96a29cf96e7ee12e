"""OpenAI response bodies out: completions, chunks, embeddings, errors, and the market's metadata.

Pure: values in, JSON-ready dicts out. Every answer says who sold it: the ``atomic`` field of a
body (and of a stream's last chunk) holds the decision id that ``atomic bids`` shows (the
request id in hex, a slash, the task id), the winner peer, address and model, the price and each
part of a generation (which peer produced how many tokens, verified or not). :func:`error_body`
maps the SDK's errors to OpenAI's error shape and an HTTP status, in one place.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from atomic_p2p.errors import (
    AtomicError,
    AuctionError,
    ConfigError,
    DeadlineError,
    LimitExceededError,
    SignatureError,
    UnknownModelError,
)
from atomic_p2p.requester.generation import GenerationPart, GenerationResult
from atomic_p2p.requester.types import BidInfo

MAX_ERROR_CHARACTERS = 4000  # an error message quotes peers' reasons: bounded


@dataclass(frozen=True, slots=True)
class Answer:
    """What names one HTTP answer: its id, when (unix seconds), the model name the client asked
    for, and its shape (a chat completion or a text completion)."""

    answer_id: str
    created: int
    model: str
    chat: bool


@dataclass(frozen=True, slots=True)
class Sold:
    """What the market did for one answer (the ``atomic`` field and the ``x-atomic-*`` headers)."""

    decision_id: str
    capability: str
    winner: BidInfo | None
    price: float | None
    parts: tuple[GenerationPart, ...] = ()

    def to_dict(self) -> dict[str, object]:
        winner = self.winner
        return {
            "decision_id": self.decision_id,
            "capability": self.capability,
            "peer": winner.peer_id.hex if winner else None,
            "address": winner.address if winner else None,
            "model": winner.model_id if winner else None,
            "price": self.price,
            "parts": [
                {
                    "peer": part.bid.peer_id.hex,
                    "model": part.bid.model_id,
                    "tokens": len(part.tokens),
                    "verified": part.verified,
                }
                for part in self.parts
            ],
        }

    def headers(self) -> dict[str, str]:
        headers = {"x-atomic-decision": self.decision_id, "x-atomic-capability": self.capability}
        if self.winner is not None:
            headers |= {"x-atomic-peer": self.winner.peer_id.hex, "x-atomic-model": self.winner.model_id}
        if self.price is not None:
            headers["x-atomic-price"] = f"{self.price:.9g}"
        return headers


def decision_id(request_id: bytes, task_id: str) -> str:
    return f"{request_id.hex()}/{task_id}"


def sold_generation(result: GenerationResult) -> Sold:
    verified = [part for part in result.parts if part.verified]
    winner = verified[-1].bid if verified else None
    return Sold(
        decision_id(result.request_id, result.task_id), result.capability, winner, result.price, result.parts
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """Token counts, each by the selling peer's own tokenizer: ``prompt_tokens`` as the peer that
    finished counted the prompt (its signed receipt's ``input_tokens``), ``completion_tokens``
    the tokens the selling peers produced."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    answer: Answer, text: str, finish: str, prompt_tokens: int, tokens: int, sold: Sold
) -> dict[str, object]:
    if answer.chat:
        choice: dict[str, object] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {
        "id": answer.answer_id,
        "object": "chat.completion" if answer.chat else "text_completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [choice],
        "usage": usage(prompt_tokens, tokens),
        "atomic": sold.to_dict(),
    }


def chunk(
    answer: Answer, text: str | None, finish: str | None = None, first: bool = False
) -> dict[str, object]:
    """One streamed chunk; ``text`` None makes a chunk with no choices (the usage chunk)."""
    choices: list[dict[str, object]] = []
    if text is not None:
        if answer.chat:
            delta: dict[str, object] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choices.append({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None})
        else:
            choices.append({"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
    return {
        "id": answer.answer_id,
        "object": "chat.completion.chunk" if answer.chat else "text_completion",
        "created": answer.created,
        "model": answer.model,
        "choices": choices,
    }


def embeddings(
    model: str, vectors: Sequence[Sequence[float]], *, as_base64: bool, sold: Sold, input_tokens: int
) -> dict[str, object]:
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if as_base64
            else list(vector),
        }
        for index, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
        "atomic": sold.to_dict(),
    }


# (status, OpenAI error type, code) by error class, most specific first.
_STATUSES: tuple[tuple[type[AtomicError], int, str, str], ...] = (
    (UnknownModelError, 404, "invalid_request_error", "model_not_found"),
    (ConfigError, 400, "invalid_request_error", "invalid_request"),
    (SignatureError, 401, "authentication_error", "invalid_api_key"),
    (LimitExceededError, 429, "rate_limit_error", "rate_limit_exceeded"),
    (DeadlineError, 504, "timeout_error", "deadline_exceeded"),
    (AuctionError, 503, "market_error", "no_seller"),
)


def status_of(error: AtomicError) -> int:
    return next((status for kind, status, _, _ in _STATUSES if isinstance(error, kind)), 502)


def error_body(error: AtomicError) -> dict[str, object]:
    """OpenAI's error shape for ``error``; an unexpected peer error is a 502."""
    kind, code = next(
        ((kind, code) for cls, _, kind, code in _STATUSES if isinstance(error, cls)),
        ("upstream_error", "peer_error"),
    )
    message = str(error)
    if len(message) > MAX_ERROR_CHARACTERS:
        message = message[:MAX_ERROR_CHARACTERS] + f"... ({len(message)} characters)"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
