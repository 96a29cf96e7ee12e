"""peers/text.py: the docstring classifiers and language model train, cache and do their job."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atomic_p2p.peer.generation import Decoder
from peers import text
from peers.examples import weights_cache_dir


def test_the_split_is_stable_and_every_package_is_held_out() -> None:
    train, train_labels, held_out, labels = text.dataset()
    assert len(train) > 1000 and len(held_out) > 200
    assert not set(train) & set(held_out)
    assert set(labels) == set(train_labels) == set(range(len(text.PACKAGES)))


def test_the_classifiers_differ_in_tokenizer_and_beat_chance_held_out() -> None:
    char, word = text.char_classifier(weights_cache_dir()), text.word_classifier(weights_cache_dir())
    assert char.tokenizer is not None and word.tokenizer is not None
    assert char.tokenizer.vocab_size != word.tokenizer.vocab_size
    assert char.validation_accuracy is not None and word.validation_accuracy is not None
    assert char.validation_accuracy > 0.45  # four packages: chance is about 0.25
    assert word.validation_accuracy > 0.8 > char.validation_accuracy


def test_a_second_build_loads_the_cached_weights(tmp_path: Path) -> None:
    first = text.char_classifier(tmp_path, steps=5)
    (cached,) = tmp_path.glob("text-char-*.pt")
    second = text.char_classifier(tmp_path, steps=5)
    assert list(tmp_path.glob("*.pt")) == [cached]
    inputs = first.tokenizer.encode(["Return the event loop."], 160)  # type: ignore[union-attr]
    with torch.inference_mode():
        assert torch.equal(first.module(**inputs), second.module(**inputs))
    assert first.validation_accuracy == second.validation_accuracy


def test_the_language_model_generates_tokens_of_its_vocabulary() -> None:
    model = text.char_lm(weights_cache_dir())
    assert model.generation is not None and model.tokenizer is not None
    prompt = torch.tensor([model.tokenizer.encode(["Return the "], 64)["input_ids"][0].tolist()])
    decoder = Decoder(model.module, model.generation, prompt, 20, torch.device("cpu"))
    tokens = [token for token in iter(decoder.step, None)]
    assert len(tokens) == 20
    assert all(2 <= token < model.generation.vocab_size for token in tokens)
    assert model.tokenizer.decode(tokens).strip()


def test_stripped_docstrings_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text, "docstrings", lambda package: [])
    text.dataset.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="python -OO"):
            text.dataset()
    finally:
        text.dataset.cache_clear()
