"""Text sellers for tests: a bag-of-tokens sentiment classifier over a built-in tokenizer.

:func:`text_classifier` (``atomic_p2p.testing:text_classifier``) needs no training and no
download: a sum of per-token class scores, set by hand for a word vocabulary (positive words
push class 1, negative ones class 0) or seeded at random for a character vocabulary, so two peers
can hold different vocabularies and still compete for the same text. :func:`text_seller_config`
hosts one under a token limit::

    config = text_seller_config("words", tmp_path, tokenizer="word", max_input_tokens=16)
    result = await requester.run("classify/sentiment", text=["a great film"])
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

from atomic_p2p.contract import Dim, ModelContract, TaskKind, TensorContract
from atomic_p2p.peer.config import PeerConfig
from atomic_p2p.peer.generation import Generation
from atomic_p2p.peer.models import BuiltModel
from atomic_p2p.peer.text import CharTokenizer, Tokenizer, WordTokenizer
from atomic_p2p.terms import ModelConstraints
from atomic_p2p.testing._models import CountUp, one_model_peer

TEXT_FACTORY = "atomic_p2p.testing:text_classifier"
POSITIVE = ("good", "great", "excellent", "love", "fine", "wonderful")
NEGATIVE = ("bad", "awful", "terrible", "hate", "boring", "poor")
ALPHABET = string.ascii_lowercase + string.digits + " .,!?'"


class BagOfTokens(torch.nn.Module):
    """Logits = the sum of each (unmasked) token's class scores: ``input_ids``, ``attention_mask`` in."""

    def __init__(self, vocab_size: int, classes: int) -> None:
        super().__init__()
        self.scores = torch.nn.Embedding(vocab_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return (self.scores(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)).sum(dim=1)


def text_classifier(
    cache_dir: Path, *, tokenizer: str = "word", seed: int = 0, max_tokens: int = 512, accuracy: float = 0.9
) -> BuiltModel:
    """A :class:`BagOfTokens` sentiment classifier (class 1: positive) over a built-in ``word`` or
    ``char`` tokenizer; texts longer than ``max_tokens`` tokens do not fit its contract."""
    vocabulary: Tokenizer
    if tokenizer == "word":
        vocabulary = WordTokenizer((*NEGATIVE, *POSITIVE))
    elif tokenizer == "char":
        vocabulary = CharTokenizer(ALPHABET)
    else:
        raise ValueError(f"tokenizer is 'word' or 'char', got {tokenizer!r}")
    module = BagOfTokens(vocabulary.vocab_size, 2)
    with torch.no_grad():
        module.scores.weight.copy_(
            torch.randn(vocabulary.vocab_size, 2, generator=torch.Generator().manual_seed(seed))
        )
        if tokenizer == "word":
            module.scores.weight.zero_()
            for index in range(len(NEGATIVE)):
                module.scores.weight[2 + index] = torch.tensor([1.0, -1.0])
                module.scores.weight[2 + len(NEGATIVE) + index] = torch.tensor([-1.0, 1.0])
    tokens = Dim(1, max_tokens)
    contract = ModelContract(
        TaskKind.CLASSIFICATION,
        (
            TensorContract("input_ids", "int64", (tokens,)),
            TensorContract("attention_mask", "int64", (tokens,)),
        ),
        (TensorContract("logits", "float32", (Dim.fixed(2),)),),
    )
    return BuiltModel(module=module, contract=contract, tokenizer=vocabulary, validation_accuracy=accuracy)


def text_seller_config(
    name: str,
    data_dir: Path,
    *,
    tokenizer: str = "word",
    capability: str = "classify/sentiment",
    confidence: float = 0.9,
    price: float = 0.001,
    max_input_tokens: int = 0,
    languages: tuple[str, ...] = (),
    **peer_fields: Any,
) -> PeerConfig:
    """A peer called ``name`` hosting one :func:`text_classifier` ``<name>-model`` that bids
    ``confidence`` at ``price``, refusing texts over ``max_input_tokens`` of its own tokens."""
    return one_model_peer(
        name,
        data_dir,
        model_id=f"{name}-model",
        capability=capability,
        factory=TEXT_FACTORY,
        confidence=confidence,
        price=price,
        options={"tokenizer": tokenizer},
        constraints=ModelConstraints(
            max_input_tokens=max_input_tokens, supported_languages=languages, max_batch=256
        ),
        **peer_fields,
    )


TEXT_GENERATOR_FACTORY = "atomic_p2p.testing:text_generator"


def text_generator(
    cache_dir: Path,
    *,
    tokenizer: str = "char",
    words: tuple[str, ...] = (),
    max_tokens: int = 64,
    context: int = 256,
    fail_at_length: int = 0,
    step_s: float = 0.0,
) -> BuiltModel:
    """A :class:`~atomic_p2p.testing._models.CountUp` generation model over a built-in tokenizer:
    ``char`` (after a character, the next one of the alphabet) or ``word`` over ``words`` (after a
    word, the next word of the list), so two peers continue each other's text deterministically.
    ``step_s`` makes every step take that long (a slow model)."""
    vocabulary: Tokenizer = CharTokenizer(ALPHABET) if tokenizer == "char" else WordTokenizer(words)
    return BuiltModel(
        module=CountUp(vocabulary.vocab_size, fail_at_length, step_s),
        input_shape=(1,),
        input_dtype="int64",
        validation_accuracy=1.0,
        input_name="input_ids",
        output_name="logits",
        generation=Generation(vocab_size=vocabulary.vocab_size, max_tokens=max_tokens, context=context),
        tokenizer=vocabulary,
    )


def text_generator_config(
    name: str,
    data_dir: Path,
    *,
    capability: str = "generate/text",
    confidence: float = 0.9,
    price: float = 0.001,
    max_input_tokens: int = 0,
    port: int = 0,
    **options: Any,
) -> PeerConfig:
    """A peer called ``name`` hosting one :func:`text_generator` ``<name>-lm`` (``options``: its
    tokenizer, words, fail_at_length, step_s) that bids ``confidence`` at ``price``, listening on ``port``
    (0: any free port)."""
    return one_model_peer(
        name,
        data_dir,
        model_id=f"{name}-lm",
        capability=capability,
        factory=TEXT_GENERATOR_FACTORY,
        confidence=confidence,
        price=price,
        options=options,
        constraints=ModelConstraints(max_input_tokens=max_input_tokens, max_batch=1),
        port=port,
    )


TEXT_EMBEDDER_FACTORY = "atomic_p2p.testing:text_embedder"


class MeanEmbedding(torch.nn.Module):
    """The mean of the (unmasked) tokens' vectors, scaled to unit length: ``input_ids``,
    ``attention_mask`` in, ``embedding: float32[B, dimensions]`` out."""

    def __init__(self, vocab_size: int, dimensions: int, seed: int) -> None:
        super().__init__()
        self.vectors = torch.nn.Embedding(vocab_size, dimensions)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed)
            self.vectors.weight.copy_(torch.randn(vocab_size, dimensions, generator=generator))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        mean = (self.vectors(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return torch.nn.functional.normalize(mean, dim=-1)


def text_embedder(
    cache_dir: Path, *, tokenizer: str = "char", dimensions: int = 16, seed: int = 0, max_tokens: int = 512
) -> BuiltModel:
    """A :class:`MeanEmbedding` text embedding model (kind ``embedding``) over a built-in ``char``
    or ``word`` tokenizer, seeded: the same text gets the same unit vector from every peer that
    hosts it with the same options; nothing is trained or cached."""
    vocabulary: Tokenizer = (
        CharTokenizer(ALPHABET) if tokenizer == "char" else WordTokenizer((*NEGATIVE, *POSITIVE))
    )
    tokens = Dim(1, max_tokens)
    contract = ModelContract(
        TaskKind.EMBEDDING,
        (
            TensorContract("input_ids", "int64", (tokens,)),
            TensorContract("attention_mask", "int64", (tokens,)),
        ),
        (TensorContract("embedding", "float32", (Dim.fixed(dimensions),)),),
    )
    module = MeanEmbedding(vocabulary.vocab_size, dimensions, seed)
    return BuiltModel(module=module, contract=contract, tokenizer=vocabulary)


def text_embedder_config(
    name: str,
    data_dir: Path,
    *,
    capability: str = "embed/text",
    confidence: float = 0.9,
    price: float = 0.001,
    **options: Any,
) -> PeerConfig:
    """A peer called ``name`` hosting one :func:`text_embedder` ``<name>-embedder`` (``options``:
    its tokenizer, dimensions, seed) that bids at ``price`` per text."""
    return one_model_peer(
        name,
        data_dir,
        model_id=f"{name}-embedder",
        capability=capability,
        factory=TEXT_EMBEDDER_FACTORY,
        confidence=confidence,
        price=price,
        options=options,
        constraints=ModelConstraints(max_batch=256),
    )
