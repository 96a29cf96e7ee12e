"""Hosting a Hugging Face transformers directory: the model and its tokenizer, from local files only.

How this works
--------------
A config names a directory written by ``save_pretrained`` (``huggingface = "path/to/dir"``). Its
``config.json`` says the architecture, and the architecture says what the model sells:

- ``*ForSequenceClassification``: kind classification, ``logits: float32[B, num_labels]``;
- ``*ForCausalLM`` / ``*LMHeadModel``: kind generation over ExecuteStream (docs/architecture.md
  section 13), the greedy :class:`~atomic_p2p.peer.generation.Decoder` calling ``module(ids) ->
  logits[B, T, V]``;
- anything else (an encoder without a head): kind embedding, ``embedding: float32[B, hidden]``,
  the hidden states mean-pooled over the attention mask.

Token models take ``input_ids`` and ``attention_mask``, ``int64[B, 1..max_len]``, where max_len is
the model's ``max_position_embeddings`` (or ``n_positions``), capped by the config's
``max_input_tokens``; a ``[models.contract]`` table overrides the whole contract. Everything loads
with ``local_files_only=True``: a peer never downloads weights, and a directory that lacks a file
fails at start with a ConfigError saying which. This module is imported only for such a config, so
the base install never imports transformers (the ``atomic-p2p[hf]`` extra brings it).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from atomic_p2p.contract import Dim, ModelContract, TaskKind, TensorContract
from atomic_p2p.errors import ConfigError
from atomic_p2p.peer.config import ModelConfig
from atomic_p2p.peer.generation import Generation
from atomic_p2p.peer.models import BuiltModel

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
TOKEN_INPUTS = ("input_ids", "attention_mask")
# The most tokens one generation order may ask for (further capped by the context).
MAX_GENERATED_TOKENS = 256


class HuggingFaceTokenizer:
    """A transformers tokenizer behind the peer's ``Tokenizer`` protocol (``atomic_p2p.peer.text``).

    ``encode`` returns the contract's token inputs by name, padded to the longest text: a
    classifier's ``input_ids`` and ``attention_mask``, a generator's ``prompt``.
    """

    def __init__(self, tokenizer: Any, input_names: Sequence[str]) -> None:
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # GPT-style tokenizers pad with their end token
        self._tokenizer = tokenizer
        self._input_names = tuple(input_names)
        # One call at a time: a fast tokenizer's encode sets its truncation and padding in place,
        # and a generation decodes its pieces in a worker thread while the event loop may encode
        # another order's prompt (concurrent use fails with "Already borrowed").
        self._lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def count(self, text: str) -> int:
        with self._lock:
            return len(self._tokenizer(text)["input_ids"])

    def encode(self, texts: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
        with self._lock:
            encoded = self._tokenizer(
                list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
            )
        if self._input_names == ("prompt",):
            return {"prompt": encoded["input_ids"].to(torch.int64)}
        return {name: encoded[name].to(torch.int64) for name in self._input_names}

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))


class _Logits(torch.nn.Module):
    """``module(input_ids, attention_mask) -> logits`` (a classifier) or ``module(ids) -> logits`` (an LM)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class _MeanPooled(torch.nn.Module):
    """An encoder's last hidden states, averaged over the tokens the mask keeps."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def load(config: ModelConfig) -> BuiltModel:
    """The model and tokenizer of ``config.huggingface``, from local files only."""
    assert config.huggingface is not None
    directory = config.huggingface
    _check_files(config.model_id, directory)
    transformers = _transformers(config.model_id)
    try:
        hf_config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        kind = _kind(hf_config)
        model = _auto_class(transformers, kind).from_pretrained(directory, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"model {config.model_id}: cannot load the Hugging Face directory {directory}: {exc}"
        ) from None
    return _built(config, kind, hf_config, model, tokenizer)


def _check_files(model_id: str, directory: Path) -> None:
    """Name what is missing before transformers looks (it would say less, or reach for the Hub)."""
    missing = []
    if not (directory / "config.json").is_file():
        missing.append("config.json")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"weights (one of {', '.join(WEIGHT_FILES)})")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if missing:
        raise ConfigError(
            f"model {model_id}: the Hugging Face directory {directory} lacks {'; '.join(missing)}; "
            "write it with model.save_pretrained(dir) and tokenizer.save_pretrained(dir) "
            "(peers never download)"
        )


def _transformers(model_id: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f"model {model_id} is a Hugging Face directory, but transformers is not installed; "
            "install atomic-p2p[hf]"
        ) from None
    return transformers


def _kind(hf_config: Any) -> TaskKind:
    architectures = tuple(getattr(hf_config, "architectures", None) or ())
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return TaskKind.CLASSIFICATION
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return TaskKind.GENERATION
    return TaskKind.EMBEDDING


def _auto_class(transformers: Any, kind: TaskKind) -> Any:
    return {
        TaskKind.CLASSIFICATION: transformers.AutoModelForSequenceClassification,
        TaskKind.GENERATION: transformers.AutoModelForCausalLM,
        TaskKind.EMBEDDING: transformers.AutoModel,
    }[kind]


def _built(config: ModelConfig, kind: TaskKind, hf_config: Any, model: Any, tokenizer: Any) -> BuiltModel:
    max_len = _max_len(config, hf_config)
    if kind is TaskKind.GENERATION:
        generation = _generation(hf_config, max_len)
        return BuiltModel(
            module=_Logits(model),
            input_name="prompt",
            validation_accuracy=None,
            contract=config.contract,
            generation=generation,
            tokenizer=HuggingFaceTokenizer(tokenizer, ("prompt",)),
        )
    contract = config.contract or _token_contract(kind, hf_config, max_len)
    module = _Logits(model) if kind is TaskKind.CLASSIFICATION else _MeanPooled(model)
    return BuiltModel(
        module=module,
        contract=contract,
        validation_accuracy=0.0 if kind.has_confidence else None,
        tokenizer=HuggingFaceTokenizer(tokenizer, contract.input_names),
    )


def _max_len(config: ModelConfig, hf_config: Any) -> int:
    context = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", None)
    limit = config.constraints.max_input_tokens
    if not context and not limit:
        raise ConfigError(
            f"model {config.model_id}: its config.json states no max_position_embeddings; "
            "set [models.constraints] max_input_tokens"
        )
    return min(value for value in (context, limit) if value)


def _token_contract(kind: TaskKind, hf_config: Any, max_len: int) -> ModelContract:
    tokens = (Dim(1, max_len),)
    inputs = tuple(TensorContract(name, "int64", tokens) for name in TOKEN_INPUTS)
    if kind is TaskKind.CLASSIFICATION:
        output = TensorContract("logits", "float32", (Dim.fixed(hf_config.num_labels),))
    else:
        output = TensorContract("embedding", "float32", (Dim.fixed(hf_config.hidden_size),))
    return ModelContract(kind, inputs, (output,))


def _generation(hf_config: Any, context: int) -> Generation:
    vocab_size = int(hf_config.vocab_size)
    end = getattr(hf_config, "eos_token_id", None)
    end_token = end if isinstance(end, int) and 0 <= end < vocab_size else None
    return Generation(
        vocab_size=vocab_size,
        max_tokens=min(MAX_GENERATED_TOKENS, context - 1),
        context=context,
        end_token=end_token,
    )
