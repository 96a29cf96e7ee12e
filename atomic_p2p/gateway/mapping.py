"""OpenAI request bodies in, market calls out: parsing, the chat template and stop sequences.

How this works
--------------
Pure: a JSON body (already decoded) becomes a :class:`GenerationCall` or an
:class:`EmbeddingCall`, or a :class:`~atomic_p2p.errors.ConfigError` whose message names the field
(the gateway answers it 400). Fields the market cannot honour are refused rather than ignored:
peers decode greedily, so ``temperature`` other than 0 (or 1, OpenAI's default) and ``top_p``
other than 1 are refused, as are ``n`` > 1 (every choice would be the same text), tools, logprobs
and penalties. Unknown fields are ignored, as clients send their own extras.

The one extra field, ``market`` (docs/gateway.md), carries the market's settings: ``priority``
(speed, accuracy, balanced, or weights), ``max_price``, ``prefer`` and ``exclude`` (peer ids or
addresses), ``allow_fallbacks`` and ``deadline_s``; it becomes the SDK's terms and
:class:`~atomic_p2p.requester.selection.Selection`.

A chat is rendered to one text prompt (peers take text and tokenise it themselves): one line
``role: content`` per message, then ``assistant:``. :class:`StopScanner` cuts a streamed text at
the first stop sequence, holding back only what could still begin one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from atomic_p2p.errors import ConfigError
from atomic_p2p.requester.selection import Selection
from atomic_p2p.requester.weights import COMPONENTS, PROFILES, WeightsSpec

DEFAULT_MAX_TOKENS = 32  # a generation's budget when the request names none
MAX_TOKENS = 4096  # the most one request may order (a peer may allow fewer and fail the order)
MAX_PROMPT_CHARACTERS = 100_000
MAX_MESSAGES = 256
MAX_STOPS = 4  # as OpenAI
MAX_STOP_CHARACTERS = 64
MAX_EMBEDDING_INPUTS = 256
MAX_DEADLINE_S = 600.0
CHAT_ROLES = ("system", "developer", "user", "assistant")
# Fields whose only meaningful value here is their default: anything else is refused, not ignored.
UNSUPPORTED = {
    "tools": "tools are not supported: peers generate plain text",
    "tool_choice": "tools are not supported: peers generate plain text",
    "functions": "functions are not supported: peers generate plain text",
    "function_call": "functions are not supported: peers generate plain text",
    "logprobs": "logprobs are not supported: peers do not return them",
    "top_logprobs": "logprobs are not supported: peers do not return them",
    "logit_bias": "logit_bias is not supported: peers decode greedily",
    "presence_penalty": "penalties are not supported: peers decode greedily",
    "frequency_penalty": "penalties are not supported: peers decode greedily",
    "best_of": "best_of is not supported: peers decode greedily",
    "echo": "echo is not supported",
    "suffix": "suffix is not supported",
    "response_format": "response_format is not supported: peers generate plain text",
}
_DEFAULTS: dict[str, tuple[object, ...]] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "functions": (None, []),
    "logit_bias": (None, {}),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
}


@dataclass(frozen=True, slots=True)
class MarketSettings:
    """The ``market`` field: how to buy (see the module docstring)."""

    weights: WeightsSpec = None
    max_price: float | None = None
    selection: Selection = field(default_factory=Selection)
    deadline_s: float | None = None


@dataclass(frozen=True, slots=True)
class GenerationCall:
    """A chat or text completion to buy: ``model`` is a capability, a model id or ``auto``."""

    model: str
    prompt: str
    max_tokens: int
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    market: MarketSettings = field(default_factory=MarketSettings)
    chat: bool = True  # the shape of the answer: chat.completion or text_completion


@dataclass(frozen=True, slots=True)
class EmbeddingCall:
    model: str
    texts: tuple[str, ...]
    base64: bool = False  # encoding_format "base64": little-endian float32 bytes (the openai package asks so)
    market: MarketSettings = field(default_factory=MarketSettings)


def clip(value: object, limit: int = 64) -> str:
    """A bounded repr of something a client sent, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_chat(body: object) -> GenerationCall:
    fields = _object(body, "the request body")
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConfigError("messages is a non-empty list of {role, content} objects")
    if len(messages) > MAX_MESSAGES:
        raise ConfigError(f"at most {MAX_MESSAGES} messages, got {len(messages)}")
    prompt = render_chat([_message(index, message) for index, message in enumerate(messages)])
    return _generation(fields, prompt, chat=True)


def parse_completion(body: object) -> GenerationCall:
    fields = _object(body, "the request body")
    prompt = fields.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ConfigError(
            "prompt is one string (token-id prompts and batches of prompts are not supported: "
            "each peer tokenises the text with its own tokenizer)"
        )
    return _generation(fields, prompt, chat=False)


def parse_embedding(body: object) -> EmbeddingCall:
    fields = _object(body, "the request body")
    texts = fields.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        raise ConfigError("input is a non-empty string or a list of them (token-id inputs are not supported)")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise ConfigError(f"at most {MAX_EMBEDDING_INPUTS} inputs, got {len(texts)}")
    if sum(len(text) for text in texts) > MAX_PROMPT_CHARACTERS:
        raise ConfigError(f"the inputs exceed {MAX_PROMPT_CHARACTERS} characters in all")
    encoding = fields.get("encoding_format", "float")
    if encoding not in ("float", "base64", None):
        raise ConfigError(f"encoding_format is 'float' or 'base64', got {clip(encoding)}")
    if fields.get("dimensions") is not None:
        raise ConfigError("dimensions is not supported: each embedding model has its own size")
    return EmbeddingCall(
        _model(fields), tuple(texts), encoding == "base64", parse_market(fields.get("market"))
    )


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """The one text prompt of a chat: ``role: content`` per message, then ``assistant:``."""
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"


def parse_market(value: object) -> MarketSettings:
    if value is None:
        return MarketSettings()
    fields = _object(value, "market")
    unknown = set(fields) - {"priority", "max_price", "prefer", "exclude", "allow_fallbacks", "deadline_s"}
    if unknown:
        raise ConfigError(f"market has no field {clip(sorted(unknown)[0])}; see docs/gateway.md")
    fallback = fields.get("allow_fallbacks", True)
    if not isinstance(fallback, bool):
        raise ConfigError("market.allow_fallbacks is true or false")
    try:
        selection = Selection(
            prefer=tuple(_strings(fields, "prefer")),
            exclude=tuple(_strings(fields, "exclude")),
            fallback=fallback,
        )
    except ConfigError as error:
        raise ConfigError(f"market.{error}") from None
    return MarketSettings(
        weights=_priority(fields.get("priority")),
        max_price=_number(fields, "max_price", "market.max_price"),
        selection=selection,
        deadline_s=_deadline(fields),
    )


class StopScanner:
    """Feeds streamed text through, cut before the first stop sequence (see the module docstring)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._hold = max((len(stop) for stop in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is safe to send now ("" once stopped)."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._pending += text
        found = [at for at in (self._pending.find(stop) for stop in self._stops) if at >= 0]
        if found:
            self.stopped = True
            out, self._pending = self._pending[: min(found)], ""
            return out
        cut = max(0, len(self._pending) - self._hold)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """What was held back, once the text has ended without a stop."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


def _generation(fields: Mapping[str, Any], prompt: str, *, chat: bool) -> GenerationCall:
    if not prompt:
        raise ConfigError("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARACTERS:
        raise ConfigError(f"the prompt exceeds {MAX_PROMPT_CHARACTERS} characters")
    _refuse_unsupported(fields)
    stream = fields.get("stream", False)
    if not isinstance(stream, bool | None):
        raise ConfigError("stream is true or false")
    options = fields.get("stream_options")
    include_usage = False
    if options is not None:
        include_usage = bool(_object(options, "stream_options").get("include_usage", False))
    return GenerationCall(
        model=_model(fields),
        prompt=prompt,
        max_tokens=_max_tokens(fields),
        stop=_stops(fields.get("stop")),
        stream=bool(stream),
        include_usage=include_usage,
        market=parse_market(fields.get("market")),
        chat=chat,
    )


def _refuse_unsupported(fields: Mapping[str, Any]) -> None:
    for name, reason in UNSUPPORTED.items():
        if name in fields and fields[name] not in _DEFAULTS.get(name, (None,)):
            raise ConfigError(reason)
    n = fields.get("n")
    if n is not None and n != 1:
        raise ConfigError("n must be 1: peers decode greedily, so every choice would be the same text")
    temperature = fields.get("temperature")
    if temperature is not None and temperature not in (0, 1):
        raise ConfigError(
            "temperature must be 0 (or 1, the default) or left out: peers decode greedily, "
            f"got {clip(temperature)}"
        )
    top_p = fields.get("top_p")
    if top_p is not None and top_p != 1:
        raise ConfigError(f"top_p must be 1 or left out: peers decode greedily, got {clip(top_p)}")


def _message(index: int, message: object) -> tuple[str, str]:
    fields = _object(message, f"messages[{index}]")
    role = fields.get("role")
    if role not in CHAT_ROLES:
        raise ConfigError(f"messages[{index}].role is one of {', '.join(CHAT_ROLES)}, got {clip(role)}")
    content = fields.get("content")
    if isinstance(content, list):  # content parts: only text ones
        texts = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise ConfigError(f"messages[{index}].content parts must be text parts: peers take text only")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise ConfigError(f"messages[{index}].content is a string or a list of text parts")
    return role, content


def _model(fields: Mapping[str, Any]) -> str:
    model = fields.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise ConfigError("model is a capability, a model id or 'auto' (GET /v1/models lists them)")
    return model


def _max_tokens(fields: Mapping[str, Any]) -> int:
    value = fields.get("max_completion_tokens", fields.get("max_tokens"))
    if value is None:
        return DEFAULT_MAX_TOKENS
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_TOKENS:
        raise ConfigError(f"max_tokens is an integer in [1, {MAX_TOKENS}], got {clip(value)}")
    return value


def _stops(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        raise ConfigError(f"stop is a string or a list of at most {MAX_STOPS} strings")
    if not all(isinstance(stop, str) and 0 < len(stop) <= MAX_STOP_CHARACTERS for stop in stops):
        raise ConfigError(
            f"each stop sequence is a non-empty string of at most {MAX_STOP_CHARACTERS} characters"
        )
    return tuple(stops)


def _priority(value: object) -> WeightsSpec:
    if value is None or (isinstance(value, str) and value in PROFILES):
        return value
    if isinstance(value, dict) and value and set(value) <= set(COMPONENTS):
        weights = {name: _number(value, name, f"market.priority.{name}") for name in value}
        return {name: weight for name, weight in weights.items() if weight is not None}
    raise ConfigError(
        f"market.priority is one of {', '.join(sorted(PROFILES))} or weights of "
        f"{', '.join(COMPONENTS)}, got {clip(value)}"
    )


def _deadline(fields: Mapping[str, Any]) -> float | None:
    deadline = _number(fields, "deadline_s", "market.deadline_s")
    if deadline is not None and not 0 < deadline <= MAX_DEADLINE_S:
        raise ConfigError(f"market.deadline_s is in (0, {MAX_DEADLINE_S:g}] seconds")
    return deadline


def _number(fields: Mapping[str, Any], name: str, where: str) -> float | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where} is a non-negative number, got {clip(value)}")
    return float(value)


def _strings(fields: Mapping[str, Any], name: str) -> list[str]:
    value = fields.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"market.{name} is a list of peer ids or addresses")
    return value


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object")
    return value
