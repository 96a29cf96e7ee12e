"""Text on the wire: the built-in tokenizers, the language check, text limits and the text digest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from atomic_p2p import tensors
from atomic_p2p.errors import ConfigError, LimitExceededError, TextError
from atomic_p2p.identity import Identity
from atomic_p2p.peer.config import ModelConfig
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.text import CharTokenizer, Tokenizer, WordTokenizer, language_supported, most_tokens
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import ExecuteOrder
from atomic_p2p.testing import count_up_lm, text_classifier

# The vectors documented in docs/protocol.md, section 4.
TEXTS = ("héllo", "ok")
TEXT_DIGEST_HEX = "510cf56d76226c8ab6138aa39a55ddc8875d84ae9e50871ba6ef75753216bec9"
TENSOR_AND_TEXT_DIGEST_HEX = "4f070e15345c69ef99fa0edf2163016627ed6215001b6dfebc8401da906ab5b4"
ORDER_PAYLOAD_HEX = (
    "0a1000000000000000000000000000000000120274301a2000000000000000000000000000000000000000000000"
    "000000000000000000002080d095ffbc312a20510cf56d76226c8ab6138aa39a55ddc8875d84ae9e50871ba6ef75"
    "753216bec93088f795ffbc31"
)
ORDER_SIGNATURE_HEX = (
    "4a6d43744645c4bdbd03776217636a83fb8e50808c8b426f7906f4058afe95a7c4d84f42f4161ab1145bbcdef695b4ef"
    "252c5b7510cd98a28ded7b01536fcb02"
)


def test_char_tokenizer_pads_masks_and_round_trips() -> None:
    tokenizer = CharTokenizer("abc ")
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.vocab_size == 6
    encoded = tokenizer.encode(["ab", "c", ""], max_tokens=8)
    assert encoded["input_ids"].tolist() == [[2, 3], [4, 0], [0, 0]]
    assert encoded["attention_mask"].tolist() == [[1, 1], [1, 0], [0, 0]]
    assert encoded["input_ids"].dtype == torch.int64
    assert tokenizer.decode([2, 5, 4]) == "a c"
    assert tokenizer.count("abcz") == 4
    assert tokenizer.encode(["Az"], 8)["input_ids"].tolist() == [[2, 1]]  # lowercased; z unknown


def test_word_tokenizer_counts_words_and_truncates_at_max_tokens() -> None:
    tokenizer = WordTokenizer(["good", "bad"])
    assert tokenizer.count("good  bad movie") == 3
    assert tokenizer.encode(["good bad movie"], max_tokens=2)["input_ids"].tolist() == [[2, 3]]
    assert tokenizer.decode([3, 2]) == "bad good"
    assert most_tokens(tokenizer, ["a", "a b c", ""]) == 3


def test_different_vocabularies_count_the_same_text_differently() -> None:
    text = "good movie"
    assert CharTokenizer("abcdefghijklmnopqrstuvwxyz ").count(text) == 10
    assert WordTokenizer(["good"]).count(text) == 2


@pytest.mark.parametrize(
    ("supported", "language", "expected"),
    [
        ((), "fr", True),
        (("en",), "", True),
        (("en",), "en-US", True),
        (("EN",), "en", True),
        (("en",), "fr", False),
    ],
)
def test_language_supported(supported: tuple[str, ...], language: str, expected: bool) -> None:
    assert language_supported(supported, language) is expected


def test_decode_texts_names_the_text_that_is_not_utf8() -> None:
    assert tensors.decode_texts([b"ok", "é".encode()]) == ("ok", "é")
    with pytest.raises(TextError, match="text 1 is not UTF-8") as caught:
        tensors.decode_texts([b"ok", b"\xff\xfe"])
    assert caught.value.code.name == "INVALID_ARGUMENT"


def test_text_limits_per_text_per_task_and_count() -> None:
    limits = tensors.TextLimits(max_texts=2, max_text_bytes=4, max_total_bytes=6)
    with pytest.raises(LimitExceededError, match="text 1: 5 bytes"):
        tensors.decode_texts([b"a", b"12345"], limits)
    with pytest.raises(LimitExceededError, match="7 bytes exceed the limit of 6 per task"):
        tensors.decode_texts([b"1234", b"123"], limits)
    with pytest.raises(LimitExceededError, match="3 texts"):
        tensors.decode_texts([b"", b"", b""], limits)


def test_text_digest_matches_the_documented_vectors() -> None:
    texts = tensors.encode_texts(TEXTS)
    assert tensors.digest([], texts).hex() == TEXT_DIGEST_HEX
    ids = tensors.encode(torch.tensor([[1, 2]], dtype=torch.int64), "x")
    assert tensors.digest([ids], texts).hex() == TENSOR_AND_TEXT_DIGEST_HEX
    # Without texts the digest is exactly the tensor digest it always was.
    assert tensors.digest([ids], ()) == tensors.digest([ids])
    assert tensors.digest([ids], texts) != tensors.digest([ids], tensors.encode_texts(["hé", "llo", "ok"]))


def test_signed_order_over_a_text_digest_matches_the_documented_vector() -> None:
    order = ExecuteOrder(
        request_id=bytes(16),
        task_id="t0",
        bid_digest=bytes(32),
        issued_at_ms=1_700_000_000_000,
        inputs_digest=bytes.fromhex(TEXT_DIGEST_HEX),
        deadline_ms=1_700_000_005_000,
    )
    envelope = codec.sign(Identity.from_seed(b"alice"), order)
    assert envelope.payload.hex() == ORDER_PAYLOAD_HEX
    assert envelope.signature.hex() == ORDER_SIGNATURE_HEX


def test_a_tokenizer_needs_a_contract_unless_the_model_generates(tmp_path: Path) -> None:
    config = ModelConfig("m", ("c",), "unused:factory", price_per_example=0.001)
    built = text_classifier(tmp_path)
    with pytest.raises(ConfigError, match="declares a contract"):
        HostedModel(config, replace(built, contract=None), torch.device("cpu"))
    generator = replace(count_up_lm(tmp_path), tokenizer=CharTokenizer("ab"))
    assert HostedModel(config, generator, torch.device("cpu")).tokenizer is not None
    hosted = HostedModel(config, built, torch.device("cpu"))
    assert hosted.max_input_tokens == 512  # no configured limit: the contract's token dimension


def test_a_generation_model_gets_its_prompt_from_text_whatever_its_input_is_called() -> None:
    # make demo's language model names its one input "prompt", and its tokenizer says "input_ids".
    tokenizer = CharTokenizer("abcdefgh ")
    built = replace(count_up_lm(Path("."), vocab=tokenizer.vocab_size), tokenizer=tokenizer)
    assert built.input_name == "prompt"
    config = ModelConfig("lm", ("generate/x",), "unused:factory", 0.001, strategy="fixed",
                         strategy_options={"confidence": 0.9})  # fmt: skip
    model = HostedModel(config, built, torch.device("cpu"))
    ((name, ids),) = model.tokenize(["abc"])
    assert name == "prompt" and ids.tolist() == [tokenizer.ids("abc")]
