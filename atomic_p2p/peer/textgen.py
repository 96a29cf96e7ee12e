"""Text generation: a text prompt, continued by text, streamed as text (docs/protocol.md section 10).

How this works
--------------
Peers have different vocabularies, so text is what they share. A generation order whose task is
one text (``ExecuteStreamRequest.texts``) names its prompt as text, and a continuation names the
text other peers already produced (``ExecuteOrder.prefix_text``, UTF-8). The peer tokenises
``prompt || prefix_text`` with its *own* tokenizer and generates after it, exactly as for token ids.

Each step is streamed as its token id and as text: :class:`TextPieces` decodes the last few
tokens after each step and sends what the new token adds beyond the text they showed before it,
so a tokenizer that joins pieces with spaces streams exactly the text it would decode at once, at
a cost per token that does not grow with the sequence. The signed result covers the UTF-8 text this peer produced (its pieces joined) as one text
under the texts digest of section 4, so the requester checks exactly the text it received.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atomic_p2p.errors import ProtocolError
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.text import Tokenizer
from atomic_p2p.protocol.messages import ExecuteOrder
from atomic_p2p.protocol.streaming import tokens_tensor
from atomic_p2p.tensors import TextLimits, digest

CONTEXT_WINDOW = 4  # context tokens decoded before the first generated one (TextPieces)


def text_inputs(
    model: HostedModel, texts: Sequence[str], order: ExecuteOrder, limits: TextLimits
) -> dict[str, torch.Tensor]:
    """A text generation order's model input: the prompt (int64[1, T]) of :func:`text_prompt`.
    A text prompt continues by ``prefix_text`` only, and ``prefix_text`` needs a text prompt."""
    if not texts:
        raise ProtocolError("prefix_text continues a text prompt; this order's prompt is token ids")
    if order.prefix_tokens:
        raise ProtocolError("a text prompt continues by prefix_text, not prefix_tokens")
    return {model.contract.inputs[0].name: text_prompt(model, texts, order.prefix_text, limits)}


def generated_digest(tokens: Sequence[int], text: str | None) -> bytes:
    """What a generation's signed result covers: the UTF-8 text produced as one text (a text
    prompt), else the token ids as one int64 tensor named ``tokens`` (docs/protocol.md section 10)."""
    if text is not None:
        return digest((), (text.encode(),))
    return digest([tokens_tensor(tokens)])


def text_prompt(
    model: HostedModel, texts: Sequence[str], prefix_text: bytes, limits: TextLimits
) -> torch.Tensor:
    """The token ids (int64[1, T]) of ``prompt || prefix_text`` by the model's own tokenizer.

    Refused (INVALID_ARGUMENT) before any work: not exactly one text, a prefix that is not UTF-8 or
    over the text limit, or a whole that does not fit the model's context."""
    if len(texts) != 1:
        raise ProtocolError(f"a text generation takes one prompt text, got {len(texts)}")
    if len(prefix_text) > limits.max_text_bytes:
        raise ProtocolError(f"prefix_text of {len(prefix_text)} bytes exceeds {limits.max_text_bytes}")
    try:
        prefix = prefix_text.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("prefix_text is not valid UTF-8") from None
    tokenizer, generation = model.tokenizer, model.generation
    if tokenizer is None or generation is None:
        raise ProtocolError(f"model {model.model_id} does not generate from text")
    whole = texts[0] + prefix
    count = tokenizer.count(whole)
    if count == 0:
        raise ProtocolError("a text prompt needs at least one token")
    if count >= generation.context:
        raise ProtocolError(
            f"prompt and prefix_text make {count} tokens (by {model.model_id}'s tokenizer), "
            f"over the context {generation.context}"
        )
    return tokenizer.encode([whole], count)["input_ids"]


class TextPieces:
    """The text each generated token adds, decoded incrementally (see the module docstring).

    Each step decodes a window of a few tokens, not the whole sequence: the window starts at the
    last token before the new one that shows text (so a tokenizer that treats the first token of
    a text specially, e.g. dropping its leading space, does so on both sides of the compare, and
    tokens that decode to nothing, like padding, do not hide a separator), and the piece is what
    the window's text gains by the new token. That is what decoding the whole sequence gives for
    any tokenizer whose pieces do not reach back past the last token that shows text."""

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(context)
        self._start = len(self._ids)  # the window: ids[_start:], showing _shown
        self._shown = ""
        width = CONTEXT_WINDOW
        while self._start > 0 and not self._shown:  # back until the window shows some text
            self._start = max(0, len(self._ids) - width)
            self._shown = tokenizer.decode(self._ids[self._start :])
            width *= 2
        self._pieces: list[str] = []

    def add(self, token: int) -> str:
        self._ids.append(token)
        decoded = self._tokenizer.decode(self._ids[self._start :])
        alone = self._tokenizer.decode([token])
        # A tokenizer that rewrites earlier text: fall back to the token on its own.
        piece = decoded[len(self._shown) :] if decoded.startswith(self._shown) else alone
        if alone:  # the next window starts at this token
            self._start, self._shown = len(self._ids) - 1, alone
        else:  # it shows nothing on its own: keep the window, now one token longer
            self._shown = decoded
        self._pieces.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self._pieces)
