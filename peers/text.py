"""Model factories for the text example peers, trained at start-up on Python's own docstrings.

The data is the English docstrings of four standard-library packages (``asyncio``, ``email``,
``logging``, ``tkinter``) as this interpreter has them: nothing is downloaded. Each docstring is
cut into sentences of 20 to 160 characters; one seeded split (80% train, 20% held out) is shared
by every model, so their held-out accuracies compare.

- :func:`char_classifier`: which package a sentence documents, read one character at a time by a
  tiny transformer encoder (``d_model`` 32, one layer). Small, quick, less accurate.
- :func:`word_classifier`: the same task over a word vocabulary of the training sentences, with a
  larger encoder (``d_model`` 64, two layers). Slower, more accurate.
- :func:`char_lm`: a character-level causal language model (a GRU) that continues a prompt in the
  style of a docstring, sold as a generation model (:mod:`atomic_p2p.peer.generation`).

Classifiers take ``input_ids`` and ``attention_mask`` (``int64[B, T]``, from their own tokenizer)
and return ``logits: float32[B, 4]`` in the order of :data:`PACKAGES`. Trained weights are cached
in ``cache_dir`` under a key made of the recipe, this file's source, torch's and Python's versions
(the docstrings change with Python), so a restart loads them in milliseconds. Training is bounded
by a number of steps, a few seconds each on one core, and shows a progress bar on a terminal.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import inspect
import json
import pkgutil
import re
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from atomic_p2p.contract import Dim, ModelContract, TaskKind, TensorContract
from atomic_p2p.peer.generation import Generation
from atomic_p2p.peer.models import BuiltModel
from atomic_p2p.peer.text import PAD_ID, CharTokenizer, Tokenizer, WordTokenizer
from atomic_p2p.peer.training import save_atomically, single_threaded
from atomic_p2p.progress import progress

PACKAGES = ("asyncio", "email", "logging", "tkinter")
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
MAX_CHARS = 160
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;'\"()[]{}_-+*/=<>!?#%&|`~@^$\\"
WORD_VOCABULARY = 3000
MAX_WORDS = 48
MIN_SENTENCES = 400  # per package about 100: fewer means docstrings were stripped


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained model (and so its cache key)."""

    name: str
    tokenizer: str  # "char" or "word"
    d_model: int
    layers: int
    steps: int
    learning_rate: float = 3e-3
    batch_size: int = 64
    train_tokens: int = MAX_WORDS  # training sees each sentence's first tokens (attention is quadratic)
    seed: int = 0


def char_classifier(cache_dir: Path, seed: int = 0, steps: int = 200) -> BuiltModel:
    recipe = Recipe(
        "char", "char", d_model=32, layers=1, steps=steps, learning_rate=5e-3, train_tokens=96, seed=seed
    )
    return build(recipe, cache_dir)


def word_classifier(cache_dir: Path, seed: int = 0, steps: int = 300) -> BuiltModel:
    return build(Recipe("word", "word", d_model=64, layers=2, steps=steps, seed=seed), cache_dir)


# --- data -----------------------------------------------------------------------------------------


def _module_names(package: str) -> list[str]:
    try:
        root = importlib.import_module(package)
    except ImportError as exc:
        raise RuntimeError(
            f"the text example peers learn from the docstrings of {', '.join(PACKAGES)}, and {package}"
            f" does not import here ({exc}); install it (for tkinter: the python3-tk package)"
        ) from exc
    found = [f"{package}.{m.name}" for m in pkgutil.iter_modules(getattr(root, "__path__", []))]
    return [package, *sorted(name for name in found if not name.endswith("__main__"))]


def docstrings(package: str) -> list[str]:
    """The docstrings of the package's modules, classes, functions and methods, in a stable order."""
    found: list[str] = []
    for name in _module_names(package):
        try:
            module = importlib.import_module(name)
        except Exception:  # a platform-specific submodule (e.g. asyncio.windows_events): skip it
            continue
        for _, value in inspect.getmembers(module):
            if getattr(value, "__module__", None) != name:
                continue
            found.append(inspect.getdoc(value) or "")
            if inspect.isclass(value):
                methods = [m for m in vars(value).values() if inspect.isfunction(m)]
                found += [inspect.cleandoc(m.__doc__ or "") for m in methods]
    return [text for text in found if text]


def sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s for s in re.split(r"(?<=[.!?])\s+", flat) if 20 <= len(s) <= MAX_CHARS]


@lru_cache(maxsize=1)
def dataset() -> tuple[list[str], list[int], list[str], list[int]]:
    """(train texts, train labels, held-out texts, held-out labels), the same split every time."""
    pairs = sorted(
        {
            (s, label)
            for label, package in enumerate(PACKAGES)
            for doc in docstrings(package)
            for s in sentences(doc)
        }
    )
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    if len({label for _, label in pairs}) < len(PACKAGES) or len(pairs) < MIN_SENTENCES:
        raise RuntimeError(
            f"found {len(pairs)} docstring sentences, too few to train on: is Python stripping"
            " docstrings (python -OO or PYTHONOPTIMIZE=2)? Start the peer without it"
        )
    held_out = int(len(pairs) * HELD_OUT_FRACTION)
    test = [pairs[i] for i in order[:held_out]]
    train = [pairs[i] for i in order[held_out:]]
    return [t for t, _ in train], [y for _, y in train], [t for t, _ in test], [y for _, y in test]


def make_tokenizer(kind: str) -> Tokenizer:
    if kind == "char":
        return CharTokenizer(ALPHABET)
    counts = collections.Counter(word for text in dataset()[0] for word in text.lower().split())
    return WordTokenizer(word for word, _ in counts.most_common(WORD_VOCABULARY))


def max_tokens(kind: str) -> int:
    return MAX_CHARS if kind == "char" else MAX_WORDS


# --- the classifier -------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """Token and position embeddings, a transformer encoder, a masked mean, a linear head."""

    def __init__(self, vocab_size: int, d_model: int, layers: int, context: int, classes: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        self.positions = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 2 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.tokens(input_ids) + self.positions(positions)
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def contract(kind: str) -> ModelContract:
    tokens = Dim(1, max_tokens(kind))
    return ModelContract(
        TaskKind.CLASSIFICATION,
        (
            TensorContract("input_ids", "int64", (tokens,)),
            TensorContract("attention_mask", "int64", (tokens,)),
        ),
        (TensorContract("logits", "float32", (Dim.fixed(len(PACKAGES)),)),),
    )


def build(recipe: Recipe, cache_dir: Path) -> BuiltModel:
    """Load the recipe's cached weights, or train and cache them."""
    tokenizer = make_tokenizer(recipe.tokenizer)
    module = TextEncoder(
        tokenizer.vocab_size, recipe.d_model, recipe.layers, max_tokens(recipe.tokenizer), len(PACKAGES)
    )
    path = Path(cache_dir) / f"text-{recipe.name}-{cache_key(recipe)[:16]}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        module.load_state_dict(saved["state"])
        accuracy, per_class = saved["accuracy"], tuple(saved["class_accuracy"])
    else:
        with single_threaded():
            train_classifier(module, tokenizer, recipe)
        accuracy, per_class = evaluate(module, tokenizer, recipe.tokenizer)
        save_atomically(
            path, {"state": module.state_dict(), "accuracy": accuracy, "class_accuracy": per_class}
        )
    return BuiltModel(
        module=module.eval(),
        contract=contract(recipe.tokenizer),
        tokenizer=tokenizer,
        validation_accuracy=accuracy,
        class_accuracy=per_class,
    )


def train_classifier(module: nn.Module, tokenizer: Tokenizer, recipe: Recipe) -> None:
    texts, labels, _, _ = dataset()
    inputs = tokenizer.encode(texts, max_tokens(recipe.tokenizer))
    y = torch.tensor(labels)
    generator = torch.Generator().manual_seed(recipe.seed)
    seeded_initialisation(module, generator)
    optimizer = torch.optim.AdamW(module.parameters(), lr=recipe.learning_rate)
    module.train()
    steps = progress(range(recipe.steps), desc=f"training text-{recipe.name}", leave=False)
    for _ in steps:
        batch = torch.randint(len(y), (recipe.batch_size,), generator=generator)
        ids, mask = inputs["input_ids"][batch], inputs["attention_mask"][batch]
        width = max(1, min(recipe.train_tokens, int(mask.sum(dim=1).max())))  # skip all-padding columns
        loss = nn.functional.cross_entropy(module(ids[:, :width], mask[:, :width]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()


def evaluate(module: nn.Module, tokenizer: Tokenizer, kind: str) -> tuple[float, tuple[float, ...]]:
    """Held-out accuracy overall and per package."""
    _, _, texts, labels = dataset()
    inputs = tokenizer.encode(texts, max_tokens(kind))
    y = torch.tensor(labels)
    with torch.inference_mode():
        correct = module(inputs["input_ids"], inputs["attention_mask"]).argmax(dim=-1) == y
    per_class = tuple(float(correct[y == c].float().mean()) for c in range(len(PACKAGES)))
    return float(correct.float().mean()), per_class


# --- the language model -------------------------------------------------------------------------


@dataclass(frozen=True)
class LmRecipe:
    """Everything that determines the trained language model (and so its cache key)."""

    name: str
    hidden: int
    steps: int
    window: int = 64  # characters per training sequence
    learning_rate: float = 1e-2
    batch_size: int = 32
    seed: int = 0


class CharLm(nn.Module):
    """A GRU over character embeddings: ``ids: int64[B, T] -> logits: float32[B, T, V]``."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embedding(ids))
        return self.head(hidden)


def char_lm(cache_dir: Path, seed: int = 0, steps: int = 400, max_tokens: int = 64) -> BuiltModel:
    """A character-level docstring LM, sold over ExecuteStream with its :class:`CharTokenizer`."""
    recipe = LmRecipe("lm", hidden=128, steps=steps, seed=seed)
    tokenizer = lm_tokenizer()
    module = CharLm(tokenizer.vocab_size, recipe.hidden)
    path = Path(cache_dir) / f"text-{recipe.name}-{cache_key(recipe)[:16]}.pt"
    if path.exists():
        module.load_state_dict(torch.load(path, weights_only=True)["state"])
    else:
        with single_threaded():
            train_lm(module, tokenizer, recipe)
        save_atomically(path, {"state": module.state_dict()})
    return BuiltModel(
        module=module.eval(),
        input_shape=(1,),
        input_dtype="int64",
        input_name="prompt",
        validation_accuracy=None,
        generation=Generation(vocab_size=tokenizer.vocab_size, max_tokens=max_tokens, context=256),
        tokenizer=tokenizer,
    )


def lm_tokenizer() -> CharTokenizer:
    """The language model's tokenizer (a buyer sends text; ids of it also work as a prompt)."""
    return CharTokenizer(ALPHABET)


def lm_corpus(tokenizer: CharTokenizer) -> torch.Tensor:
    """The training sentences as one stream of character ids (held-out sentences left out)."""
    return torch.tensor(tokenizer.ids(" ".join(dataset()[0])), dtype=torch.int64)


def train_lm(module: nn.Module, tokenizer: CharTokenizer, recipe: LmRecipe) -> None:
    stream = lm_corpus(tokenizer)
    generator = torch.Generator().manual_seed(recipe.seed)
    seeded_initialisation(module, generator)
    optimizer = torch.optim.Adam(module.parameters(), lr=recipe.learning_rate)
    module.train()
    steps = progress(range(recipe.steps), desc="training text-lm", leave=False)
    for _ in steps:
        starts = torch.randint(len(stream) - recipe.window - 1, (recipe.batch_size, 1), generator=generator)
        windows = stream[starts + torch.arange(recipe.window + 1)]
        logits = module(windows[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
    module.eval()


# --- caching and training helpers (as in digits.py) -----------------------------------------------


def cache_key(recipe: Recipe | LmRecipe) -> str:
    source = Path(__file__).read_bytes()  # a change to this file retrains
    text = json.dumps(asdict(recipe), sort_keys=True) + torch.__version__ + sys.version
    return hashlib.sha256(text.encode() + source).hexdigest()


def seeded_initialisation(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter from ``generator``, never touching the global RNG."""
    with torch.no_grad():
        for parameter in module.parameters():
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 10_000
            parameter.uniform_(-(fan_in**-0.5), fan_in**-0.5, generator=generator)
