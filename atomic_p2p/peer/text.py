"""Text inputs: the tokenizer a text model brings, a built-in one, and the language check.

How this works: text travels as UTF-8 strings, one per example (atomic_p2p.tensors checks the
bytes and their limits). Each peer turns them into its model's inputs with its *own* tokenizer, so
peers with different vocabularies compete for the same text task; a peer counts tokens with that
same tokenizer to enforce its ``max_input_tokens`` before any work. A :class:`Tokenizer` returns
the model's inputs by contract name, ``[B, T]`` int64, padded to the longest text (at most
``max_tokens``).

The built-in :class:`CharTokenizer` and :class:`WordTokenizer` need no download: a vocabulary
given in code, id 0 for padding and id 1 for anything outside the vocabulary. They are for tests
and example peers; real peers bring a Hugging Face tokenizer behind the same protocol.

Languages: a task may declare a ``language`` (a BCP 47 tag such as ``en`` or ``en-US``); a model
with ``supported_languages`` takes it when the tag's primary subtag is one of them (compared
without case). An empty list takes any language, and a task that declares none is taken by all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import torch

PAD_ID = 0
UNKNOWN_ID = 1


@runtime_checkable
class Tokenizer(Protocol):
    """What a text model's tokenizer offers the node (see the module docstring)."""

    @property
    def vocab_size(self) -> int: ...

    def count(self, text: str) -> int:
        """Tokens in one text."""
        ...

    def encode(self, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
        """The model's inputs by contract name (``input_ids``, ``attention_mask``), [B, T] int64."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...


class _VocabularyTokenizer(ABC):
    """A fixed vocabulary of pieces; subclasses say how a text splits into pieces."""

    def __init__(self, pieces: Iterable[str], lowercase: bool = True) -> None:
        self.lowercase = lowercase
        self.pieces: tuple[str, ...] = tuple(dict.fromkeys(pieces))
        self._ids = {piece: index + 2 for index, piece in enumerate(self.pieces)}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces) + 2

    @abstractmethod
    def split(self, text: str) -> list[str]:
        """The pieces of a (normalised) text, in order."""

    def ids(self, text: str) -> list[int]:
        normalized = text.lower() if self.lowercase else text
        return [self._ids.get(piece, UNKNOWN_ID) for piece in self.split(normalized)]

    def count(self, text: str) -> int:
        return len(self.split(text))

    def encode(self, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
        rows = [self.ids(text)[:max_tokens] for text in texts]
        width = max((len(row) for row in rows), default=0)
        # An empty text still gets one (padding) position, so a model never sees a zero-width batch.
        width = max(width, 1)
        input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.int64)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.int64)
            attention_mask[index, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids: Sequence[int]) -> str:
        pieces = [self.pieces[i - 2] if 2 <= i < self.vocab_size else "?" for i in ids if i != PAD_ID]
        return self._join(pieces)

    @abstractmethod
    def _join(self, pieces: list[str]) -> str:
        """A text from pieces (the inverse of :meth:`split`, up to normalisation)."""


class CharTokenizer(_VocabularyTokenizer):
    """One token per character; the vocabulary is an alphabet, e.g. ``CharTokenizer("abc... ")``."""

    def split(self, text: str) -> list[str]:
        return list(text)

    def _join(self, pieces: list[str]) -> str:
        return "".join(pieces)


class WordTokenizer(_VocabularyTokenizer):
    """One token per whitespace-separated word; the vocabulary is a list of words."""

    def split(self, text: str) -> list[str]:
        return text.split()

    def _join(self, pieces: list[str]) -> str:
        return " ".join(pieces)


def language_supported(supported: Sequence[str], language: str) -> bool:
    """Whether a model declaring ``supported`` languages takes a task in ``language``."""
    if not supported or not language:
        return True
    primary = language.split("-", 1)[0].lower()
    return primary in {tag.split("-", 1)[0].lower() for tag in supported}


def most_tokens(tokenizer: Tokenizer, texts: Sequence[str]) -> int:
    """The largest token count of any one text (what ``max_input_tokens`` bounds)."""
    return max((tokenizer.count(text) for text in texts), default=0)
