"""Hugging Face directories named in a peer TOML, served by a real node: a classifier bought by token
ids, a causal LM streamed token by token, and a directory without weights refused before any network.

The models are tiny and built here from configs (no downloaded weights), with a word-level tokenizer
made from a word list, and written with ``save_pretrained`` as a user would.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: nothing here may reach the Hub

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from atomic_p2p.contract import Dim, TaskKind, TensorContract
from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.config import load_config
from atomic_p2p.peer.huggingface import HuggingFaceTokenizer
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.requester import Requester

transformers = pytest.importorskip(
    "transformers", reason="Hugging Face support is the atomic-p2p[hf] extra (the dev extra includes it)"
)
tokenizers = pytest.importorskip("tokenizers", reason="comes with transformers (atomic-p2p[hf])")

pytestmark = [pytest.mark.integration]

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    *["the", "a", "good", "bad", "movie", "film", "plot", "was", "is", "very", "not", "dull", "fun"],
]
END = 3  # [SEP]: the language model's end token
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}

MODEL = """
[[models]]
model_id = "{model_id}"
capabilities = ["{capability}"]
huggingface = "{directory}"
price_per_example = 0.01
strategy = "fixed"
strategy_options = {{ confidence = 0.9 }}
"""


def save_tokenizer(directory: Path) -> None:
    vocabulary = {word: index for index, word in enumerate(WORDS)}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    special = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    transformers.PreTrainedTokenizerFast(tokenizer_object=model, **special).save_pretrained(directory)


def save_classifier(directory: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS), max_position_embeddings=24, num_labels=3, **TINY)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return model


def save_language_model(directory: Path) -> torch.nn.Module:
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        vocab_size=len(WORDS),
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=2,
        eos_token_id=END,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return model


def write_config(tmp_path: Path, *models: tuple[str, str, str]) -> Path:
    tables = "".join(
        MODEL.format(model_id=model_id, capability=capability, directory=directory)
        for model_id, capability, directory in models
    )
    path = tmp_path / "peer.toml"
    path.write_text(f'[peer]\nname = "hf"\ndata_dir = "data"\n{tables}')
    return path


def greedy(model: torch.nn.Module, prompt: list[int], max_tokens: int) -> list[int]:
    ids, tokens = torch.tensor([prompt]), []
    with torch.inference_mode():
        for _ in range(max_tokens):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            tokens.append(token)
            if token == END:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens


async def test_a_classifier_and_a_language_model_are_sold_from_their_directories(tmp_path: Path) -> None:
    classifier = save_classifier(tmp_path / "bert")
    language_model = save_language_model(tmp_path / "gpt")
    config = load_config(
        write_config(
            tmp_path, ("tiny-bert", "classify/sentiment", "bert"), ("tiny-gpt", "generate/words", "gpt")
        )
    )
    async with await PeerNode.start(config) as node, Requester([node.address]) as requester:
        bert, gpt = node.models["tiny-bert"], node.models["tiny-gpt"]
        tokens = (Dim(1, 24),)
        assert bert.kind is TaskKind.CLASSIFICATION and bert.contract.inputs == (
            TensorContract("input_ids", "int64", tokens),
            TensorContract("attention_mask", "int64", tokens),
        )
        assert bert.contract.outputs == (TensorContract("logits", "float32", (Dim.fixed(3),)),)
        assert gpt.kind is TaskKind.GENERATION and gpt.contract.input_names == ("prompt",)

        inputs = bert.tokenizer.encode(["the movie was fun", "a very dull plot"], max_tokens=24)
        assert (
            inputs["attention_mask"].tolist()[1] == [1, 1, 1, 1] and inputs["input_ids"].dtype == torch.int64
        )
        result = await requester.run("classify/sentiment", inputs, deadline_s=20.0, preview=False)
        with torch.inference_mode():
            expected = classifier(**inputs).logits
        assert torch.allclose(result.outputs["logits"], expected, atol=1e-5)

        prompt = gpt.tokenizer.encode(["the film is"], max_tokens=8)["prompt"][0].tolist()
        generation = requester.generate("generate/words", prompt, max_tokens=6, deadline_s=20.0)
        streamed = [token async for chunk in generation for token in chunk.tokens]
    assert streamed == greedy(language_model, prompt, 6)
    assert gpt.tokenizer.decode(prompt) == "the film is" and gpt.tokenizer.vocab_size == len(WORDS)
    assert bert.tokenizer.count("a good film") == 3


async def test_a_directory_without_model_files_is_refused_saying_what_is_missing(tmp_path: Path) -> None:
    save_tokenizer(tmp_path / "empty")
    config = load_config(write_config(tmp_path, ("nothing", "classify/sentiment", "empty")))
    with pytest.raises(ConfigError, match=r"lacks config\.json; weights \(one of model\.safetensors"):
        await PeerNode.start(config)


def test_an_encoder_without_a_head_sells_mean_pooled_embeddings(tmp_path: Path) -> None:
    torch.manual_seed(2)
    encoder = transformers.BertModel(
        transformers.BertConfig(vocab_size=len(WORDS), max_position_embeddings=16, **TINY)
    ).eval()
    encoder.save_pretrained(tmp_path / "encoder")
    save_tokenizer(tmp_path / "encoder")
    path = write_config(tmp_path, ("tiny-encoder", "embed/words", "encoder"))
    path.write_text(path.read_text() + "[models.constraints]\nmax_input_tokens = 8\n")
    (config,) = load_config(path).models
    hosted = HostedModel.load(config, tmp_path / "cache", torch.device("cpu"))
    assert hosted.kind is TaskKind.EMBEDDING and hosted.contract.output_names == ("embedding",)
    assert hosted.contract.inputs[0].dims == (Dim(1, 8),)  # max_input_tokens caps the 16 positions
    inputs = hosted.tokenizer.encode(["good fun", "not a very good plot"], max_tokens=8)
    ((name, embedding),) = hosted.forward(inputs)
    with torch.inference_mode():
        hidden = encoder(**inputs).last_hidden_state
    assert name == "embedding" and embedding.shape == (2, 32)
    assert torch.allclose(embedding[0], hidden[0, :2].mean(dim=0), atol=1e-5)


def test_the_tokenizer_serves_a_decoding_thread_and_an_encoding_one_at_once(tmp_path: Path) -> None:
    """A generation decodes its pieces in a worker thread while other threads encode prompts with
    their own truncation (the event loop, strategy previews): each call gives what it gives alone."""
    save_tokenizer(tmp_path / "words")
    tokenizer = HuggingFaceTokenizer(
        transformers.AutoTokenizer.from_pretrained(tmp_path / "words"), ("prompt",)
    )
    texts = ["the good movie", "a very dull plot was not fun at all the film is bad"]
    ids = tokenizer.encode(texts[1:], max_tokens=16)["prompt"][0].tolist()
    decoded = tokenizer.decode(ids)
    expected = {limit: tokenizer.encode(texts, max_tokens=limit)["prompt"].tolist() for limit in (3, 9)}

    def encoding(limit: int) -> None:
        for _ in range(400):
            assert tokenizer.encode(texts * 8, max_tokens=limit)["prompt"].tolist() == expected[limit] * 8

    def decoding() -> None:
        for _ in range(400):
            assert tokenizer.decode(ids) == decoded

    with ThreadPoolExecutor(max_workers=3) as pool:
        for running in [pool.submit(encoding, 3), pool.submit(encoding, 9), pool.submit(decoding)]:
            running.result(timeout=60)
