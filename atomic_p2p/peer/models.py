"""Hosted models: a torch module plus what the node must know to sell it.

A model factory (named in the config as ``package.module:function`` or ``file.py:function``) is
called as ``factory(cache_dir=Path, **options)`` and returns a :class:`BuiltModel`: the module,
its input spec and its measured held-out accuracy. :class:`HostedModel` moves the module to CUDA
when there is one (else the CPU), puts it in eval mode, validates every decoded input against
the spec, and runs it under ``torch.inference_mode`` from worker threads (torch releases the GIL
while it computes, so one node runs several calls at once).

A config may name a file instead of a factory: a TorchScript file (loaded on the CPU, with the
contract from the config) or a Hugging Face directory (``atomic_p2p.peer.huggingface``, imported
only then, so the base install never imports transformers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomic_p2p.contract import Dim, ModelContract, Spec, TaskKind, TensorContract, single_input
from atomic_p2p.errors import ConfigError, ExecutionError, TensorError
from atomic_p2p.peer.config import ModelConfig
from atomic_p2p.peer.generation import Decoder, Generation, check_order
from atomic_p2p.peer.strategies import Strategy, make_strategy
from atomic_p2p.peer.text import Tokenizer, most_tokens
from atomic_p2p.protocol.messages import TensorSpec
from atomic_p2p.tensors import DTYPES, NAMES

WARM_UP_BATCH = 8
WARM_UP_CALLS = 3  # forward passes at load: one that allocates, two timed (the quicker is the first quote)
LATENCY_EWMA_ALPHA = 0.2
PROBLEMS_REMEMBERED = 1024  # input shapes whose contract check a model remembers
PRIME_MAX_ROWS = 4096  # rows in one forward pass over several tasks' previews (prime_previews)
PROBE_SAMPLES = 5  # calls per latency probe of an idle model (each fed into the average)
# How much of a model's exception text a NoBid or an error status may carry: the text may quote
# the input (a requester's data), so it is cut, never echoed whole.
MAX_CAUSE_CHARS = 200


def model_failure(model_id: str, exc: BaseException) -> ExecutionError:
    """The error for an exception the model's own code raised: names the model and a bounded cause."""
    cause = f"{type(exc).__name__}: {exc}"
    if len(cause) > MAX_CAUSE_CHARS:
        cause = cause[: MAX_CAUSE_CHARS - 3] + "..."
    return ExecutionError(f"model {model_id} failed: {cause}")


@dataclass(frozen=True, slots=True)
class BuiltModel:
    """What a model factory returns.

    A model with one fixed-shape input may give just ``input_shape`` (and ``input_dtype``,
    ``input_name``, ``output_name``): it is then a classifier, and its outputs are named from
    ``output_name`` and shaped from its warm-up. Any other model declares a ``contract``: named
    inputs (called positionally, in contract order), dynamic dimensions, named outputs (the module
    returns a tensor, a tuple in contract order, or a dict by name) and its task kind.
    """

    module: torch.nn.Module
    # Shape of one example, without the batch dimension, e.g. (64,); ignored with a contract.
    input_shape: tuple[int, ...] = ()
    input_dtype: str = "float32"
    # Accuracy on a held-out split, in [0, 1]; strategies quote it when they cannot look at data.
    # None: not measured (a regression or embedding model has no accuracy to quote).
    validation_accuracy: float | None = 0.0
    # Held-out accuracy per class (empty if not measured); specialists show their domain here.
    class_accuracy: tuple[float, ...] = ()
    input_name: str = "x"
    output_name: str = "logits"
    contract: ModelContract | None = None
    # Set for a causal LM sold over ExecuteStream (atomic_p2p/peer/generation.py); its input is a
    # prompt of token ids, int64[1, T] with T up to the context ("input_shape" is then (1,)).
    generation: Generation | None = None
    # Set for a model that takes text (atomic_p2p/peer/text.py): the node tokenises a task's texts
    # with it, and the contract's inputs are what it produces (e.g. input_ids, attention_mask).
    tokenizer: Tokenizer | None = None


ModelFactory = Callable[..., BuiltModel]


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class LatencyEwma:
    """Exponentially weighted mean of call latency, in milliseconds, and when it last moved
    (``time.monotonic()``: the node re-measures a model nobody has run for a while)."""

    def __init__(self, alpha: float = LATENCY_EWMA_ALPHA) -> None:
        self.alpha = alpha
        self.value = 0.0
        self.updated_at = time.monotonic()
        self._seen = False

    def add(self, sample_ms: float) -> None:
        # Updated from worker threads without a lock: a lost update only delays the average a bit.
        if not self._seen:
            self.value, self._seen = sample_ms, True
        else:
            self.value += self.alpha * (sample_ms - self.value)
        self.updated_at = time.monotonic()


class HostedModel:
    """One model this node serves (implements :class:`~atomic_p2p.peer.strategies.ModelView`)."""

    def __init__(self, config: ModelConfig, built: BuiltModel, device: torch.device | None = None) -> None:
        declared = _contract_of(config.model_id, built)
        self.config = config
        self.device = device or default_device()
        self.module = built.module.to(self.device).eval()
        self.contract = declared
        self._legacy_output = None if built.contract else built.output_name
        self._checks_outputs = bool(declared.outputs)  # declared ones are held to; observed ones named
        accuracy = built.validation_accuracy
        self.accuracy_known = accuracy is not None
        self.validation_accuracy = float(accuracy) if accuracy is not None else 0.0
        self.class_accuracy = built.class_accuracy
        self.generation = built.generation
        # Text in and out, where the model has a tokenizer (a Hugging Face directory's, a factory's).
        self.tokenizer = built.tokenizer
        self.strategy: Strategy = make_strategy(config.strategy, config.strategy_options)
        self.latency = LatencyEwma()
        # Previews run together for one call for bids (prime_previews): id -> (preview, logits, confidence).
        # id(preview) -> (preview, the logits of its whole group, its first row there, its rows, confidence)
        self._primed: dict[int, tuple[Sequence[torch.Tensor], torch.Tensor, int, int, float]] = {}
        self._problems: dict[tuple[tuple[str, str, tuple[int, ...]], ...], str | None] = {}
        self._warm_up()

    @classmethod
    def load(cls, config: ModelConfig, cache_dir: Path, device: torch.device | None = None) -> HostedModel:
        """Build the model from its source (a factory may train, or load cached weights) and host it."""
        if config.huggingface is not None:
            from atomic_p2p.peer import huggingface  # transformers, only for a config that asks for it

            return cls(config, huggingface.load(config), device)
        if config.torchscript is not None:
            return cls(config, load_torchscript(config), device)
        return cls(config, build_with_factory(config, cache_dir), device)

    def __repr__(self) -> str:
        return f"HostedModel({self.model_id!r}, device={self.device})"

    # --- the ModelView protocol (what strategies see) -----------------------------------------

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self.config.capabilities

    @property
    def max_batch(self) -> int:
        return self.config.constraints.max_batch

    @property
    def max_input_tokens(self) -> int:
        """The configured limit; for a text model also no more than its contract's token dimension
        takes (texts are refused over it, never cut)."""
        declared = self.config.constraints.max_input_tokens
        if self.tokenizer is None:
            return declared
        fits = self.contract.inputs[0].dims[-1].max
        return min(declared, fits) if declared else fits

    @property
    def supported_languages(self) -> tuple[str, ...]:
        return self.config.constraints.supported_languages

    @property
    def price_per_example(self) -> float:
        return self.config.price_per_example

    @property
    def expected_latency_ms(self) -> float:
        return self.latency.value + self.config.extra_latency_ms

    @property
    def kind(self) -> TaskKind:
        return self.contract.kind

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example of the first input at its representative size (gradient bidders read it)."""
        return tuple(dim.representative for dim in self.contract.inputs[0].dims)

    def inputs_problem(self, specs: Sequence[Spec]) -> str | None:
        # Every task and preview of a call for bids is checked against the same contract, mostly
        # with the same few shapes: the answers are remembered (a bounded map, emptied when full).
        key = tuple((spec.name, spec.dtype, tuple(spec.shape)) for spec in specs)
        if key in self._problems:
            return self._problems[key]
        problem = self.contract.problem(specs)
        answer = None if problem is None else f"{self.model_id} {problem}"
        if len(self._problems) >= PROBLEMS_REMEMBERED:
            self._problems.clear()
        self._problems[key] = answer
        return answer

    def decoder(self, prompt: torch.Tensor, prefix: Sequence[int], max_tokens: int) -> Decoder:
        """A greedy decoder after ``prompt || prefix`` (a generation model only; orders checked)."""
        if self.generation is None:
            raise ExecutionError(f"model {self.model_id} does not generate")
        check_order(self.generation, prompt, prefix, max_tokens)
        ids = torch.cat([prompt, torch.tensor([list(prefix)], dtype=torch.int64)], dim=1)
        return Decoder(self.module, self.generation, ids, max_tokens, self.device, self.model_id)

    def count_tokens(self, texts: Sequence[str]) -> int | None:
        """The most tokens in one of ``texts`` by this model's own tokenizer; None if it takes no text."""
        return None if self.tokenizer is None else most_tokens(self.tokenizer, texts)

    def token_counts(self, texts: Sequence[str]) -> list[int] | None:
        """Each text's tokens by this model's own tokenizer; None if it takes no text."""
        return None if self.tokenizer is None else [self.tokenizer.count(text) for text in texts]

    def tokenize(self, texts: Sequence[str]) -> list[tuple[str, torch.Tensor]]:
        """The model's inputs for ``texts`` (counted and checked against its limits beforehand)."""
        if self.tokenizer is None:
            raise TensorError(f"{self.model_id} takes no text")
        encoded = self.tokenizer.encode(texts, self.max_input_tokens)
        if self.generation is not None:
            # A generation model takes one prompt of token ids, whatever its tokenizer calls them.
            prompt = self.contract.inputs[0].name
            ids = encoded.get(prompt, encoded.get("input_ids"))
            return [] if ids is None else [(prompt, ids)]
        return [
            (tensor.name, encoded[tensor.name]) for tensor in self.contract.inputs if tensor.name in encoded
        ]

    def preview_confidence(self, preview: Sequence[torch.Tensor]) -> float:
        primed = self._primed.get(id(preview))
        if primed is not None and primed[0] is preview:
            return primed[4]
        return _mean_max_softmax(self._preview_logits(preview))

    def prime_previews(self, previews: Sequence[Sequence[torch.Tensor]]) -> list[int]:
        """Run the model once over several tasks' previews (one call for bids holds up to 64
        tasks; one forward pass over all their rows costs about what one small one does), and
        keep each preview's logits and confidence until :meth:`forget_previews` with the keys
        returned. Previews whose rows do not fit the first input together are left out: their
        own call in :meth:`preview_confidence` raises what it would have raised. Thread-safe:
        each caller's keys are the ids of preview tuples it holds alive until it forgets them."""
        groups: dict[tuple[torch.dtype, tuple[int, ...]], list[tuple[Sequence[torch.Tensor], int]]] = {}
        max_batch = self.max_batch
        for preview in previews:
            if len(preview) == 1:  # the usual preview: one tensor, nothing to compare it with
                shape = tuple(preview[0].shape)
                if not shape or shape[0] > max_batch:
                    continue  # screening refuses it task by task
                rows = shape[0]
            else:
                if not preview or any(t.dim() < 1 or t.shape[1:] != preview[0].shape[1:] for t in preview):
                    continue
                rows = sum(t.shape[0] for t in preview)
                if any(t.dtype != preview[0].dtype for t in preview) or rows > max_batch:
                    continue
                shape = tuple(preview[0].shape)
            groups.setdefault((preview[0].dtype, shape[1:]), []).append((preview, rows))
        keys: list[int] = []
        name = self.contract.input_names[0]
        for (dtype, shape), members in groups.items():
            if len(members) < 2:
                continue
            parts = [t for preview, _ in members for t in preview]
            counts = [rows for _, rows in members]
            total = sum(counts)
            spec = TensorSpec(name, NAMES.get(dtype, str(dtype)), (total, *shape))
            if total > PRIME_MAX_ROWS or self.contract.problem([spec]) is not None:
                continue
            try:
                logits = self._call({name: torch.cat(parts)})[0][1]
            except ExecutionError:
                continue  # each preview's own call reports it, task by task
            if logits.dim() < 1 or logits.shape[0] != total:
                continue
            starts = np.cumsum([0, *counts[:-1]])
            means = np.add.reduceat(_max_softmax_rows(logits), starts) / np.asarray(counts)
            primed = self._primed
            # Each preview's rows are cut out of the logits only if a strategy asks for them.
            for (preview, count), start, mean in zip(members, starts.tolist(), means.tolist(), strict=True):
                key = id(preview)
                primed[key] = (preview, logits, start, count, mean)
                keys.append(key)
        return keys

    def forget_previews(self, keys: Sequence[int]) -> None:
        for key in keys:
            self._primed.pop(key, None)

    def text_confidence(self, texts: Sequence[str]) -> float:
        """Mean max-softmax on previewed texts (screened for count and tokens beforehand)."""
        return _mean_max_softmax(self._call(dict(self.tokenize(texts)))[0][1])

    def preview_classes(self, preview: Sequence[torch.Tensor]) -> list[int]:
        """The class the model predicts for each preview row (specialization strategies ask)."""
        return [int(c) for c in self._preview_logits(preview).argmax(dim=-1).tolist()]

    def _preview_logits(self, preview: Sequence[torch.Tensor]) -> torch.Tensor:
        """The model's output on the preview; ExecutionError (a NoBid MODEL_ERROR) if it raises."""
        primed = self._primed.get(id(preview))
        if primed is not None and primed[0] is preview:
            _, logits, start, count, _ = primed
            return logits[start : start + count]
        rows = preview[0] if len(preview) == 1 else torch.cat(list(preview))
        return self._call({self.contract.input_names[0]: rows})[0][1]

    # --- execution ----------------------------------------------------------------------------

    def check_inputs(self, named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The input tensors by name, after checking them against the contract (TensorError otherwise)."""
        specs = [TensorSpec(name, NAMES[tensor.dtype], tuple(tensor.shape)) for name, tensor in named]
        problem = self.contract.problem(specs, self.max_batch)
        if problem is not None:
            raise TensorError(f"{self.model_id} {problem}")
        return dict(named)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> tuple[tuple[str, torch.Tensor], ...]:
        """Forward pass on the model's device; call from a worker thread. Returns named CPU outputs."""
        started = time.perf_counter()
        outputs = self._call(inputs)
        self.latency.add((time.perf_counter() - started) * 1000)
        if self.config.extra_latency_ms:
            time.sleep(self.config.extra_latency_ms / 1000)
        return outputs

    def _call(self, inputs: Mapping[str, torch.Tensor]) -> tuple[tuple[str, torch.Tensor], ...]:
        try:
            with torch.inference_mode():
                raw = self.module(*(inputs[name].to(self.device) for name in self.contract.input_names))
        except Exception as exc:  # the model's code is not ours: any failure is an execution error
            raise model_failure(self.model_id, exc) from exc
        return self._named_outputs(raw, next(iter(inputs.values())).shape[0])

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """The first output for one tensor of the first input (a single-input model's forward pass)."""
        return self.forward({self.contract.input_names[0]: inputs})[0][1]

    def _named_outputs(self, raw: Any, batch: int) -> tuple[tuple[str, torch.Tensor], ...]:
        names = self.contract.output_names or self._derived_names(raw)
        if isinstance(raw, torch.Tensor):
            values: list[Any] = [raw]
        elif isinstance(raw, Mapping):
            values = [raw.get(name) for name in names]
        elif isinstance(raw, tuple | list):
            values = list(raw)
        else:
            values = []
        if len(values) != len(names) or not all(_is_batch(value, batch) for value in values):
            raise ExecutionError(
                f"model {self.model_id} returned something other than [{batch}, ...] tensors named {list(names)}"
            )
        named = tuple((name, value.to("cpu")) for name, value in zip(names, values, strict=True))
        if self._checks_outputs:
            for contract, (_, tensor) in zip(self.contract.outputs, named, strict=True):
                problem = contract.problem(NAMES.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape))
                if problem is not None:
                    raise ExecutionError(f"model {self.model_id} broke its contract: {problem}")
        return named

    def _derived_names(self, raw: Any) -> tuple[str, ...]:
        # A model without a declared contract: its outputs are named from its first answer.
        base = self._legacy_output or "output"
        if isinstance(raw, Mapping):
            return tuple(str(key) for key in raw)
        if isinstance(raw, tuple | list) and len(raw) > 1:
            return tuple(f"{base}{index}" for index in range(len(raw)))
        return (base,)

    def measure_latency(self, samples: int = PROBE_SAMPLES) -> float:
        """Time ``samples`` calls on warm-up inputs (blocking: call from a worker thread) and feed
        each into the latency average, so the quote follows the model under the node's current
        load even when no order runs it. Returns the median call in milliseconds."""
        inputs = self._probe_inputs()
        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            self._call(inputs)
            timings.append((time.perf_counter() - started) * 1000)
        for timing in timings:
            self.latency.add(timing)
        return sorted(timings)[len(timings) // 2]

    def _probe_inputs(self) -> dict[str, torch.Tensor]:
        # Zeros at the warm-up batch; dynamic dimensions at a small size within their bounds.
        batch = min(WARM_UP_BATCH, self.max_batch)
        return {
            tensor.name: torch.zeros(
                (batch, *(dim.representative for dim in tensor.dims)), dtype=DTYPES[tensor.dtype]
            )
            for tensor in self.contract.inputs
        }

    def _warm_up(self) -> None:
        # The first call allocates; the quickest of the next two is the first quote: a node
        # that starts beside busy neighbours (another peer training) would otherwise quote their
        # load for as long as nothing runs it. The node re-measures idle models later.
        inputs = self._probe_inputs()
        timings = []
        try:
            for _ in range(WARM_UP_CALLS):
                started = time.perf_counter()
                outputs = self._call(inputs)
                timings.append((time.perf_counter() - started) * 1000)
        except ExecutionError as error:
            shapes = ", ".join(f"{name}{list(tensor.shape)}" for name, tensor in inputs.items())
            raise ConfigError(f"warm-up on zeros ({shapes}): {error}") from error
        self.latency.add(min(timings[1:]))
        if not self.contract.outputs:
            self.contract = dataclasses.replace(
                self.contract, outputs=tuple(_observed(name, tensor) for name, tensor in outputs)
            )


def _contract_of(model_id: str, built: BuiltModel) -> ModelContract:
    """The declared contract, or the one of a single fixed-shape input; ConfigError if unusable."""
    if built.tokenizer is not None and built.contract is None and built.generation is None:
        raise ConfigError(
            f"model {model_id}: a model with a tokenizer declares a contract of what it produces"
        )
    if built.contract is None and built.generation is not None:
        # A causal LM takes one prompt of token ids, int64[1, T], T up to its context.
        prompt = TensorContract(built.input_name, "int64", (Dim(1, built.generation.context - 1),))
        return ModelContract(TaskKind.GENERATION, (prompt,))
    try:
        contract = built.contract or single_input(built.input_name, built.input_dtype, built.input_shape)
    except ValueError as exc:
        raise ConfigError(
            f"model {model_id}: input_shape {tuple(built.input_shape)}: {exc}; a dynamic dimension "
            "needs a contract with Dim(min, max) (see peers/README.md)"
        ) from None
    for tensor in (*contract.inputs, *contract.outputs):
        if tensor.dtype not in DTYPES:
            raise ConfigError(
                f"model {model_id}: {tensor.name!r} has dtype {tensor.dtype!r}, which cannot travel"
            )
    return contract


def _mean_max_softmax(logits: torch.Tensor) -> float:
    rows = _max_softmax_rows(logits)
    return float(np.add.reduce(rows) / rows.size)  # np.mean's own dispatch costs twice this


def _max_softmax_rows(logits: torch.Tensor) -> np.ndarray:
    # In numpy: three small torch ops here cost 0.1-3 ms on a busy 2-core machine (each may wake
    # torch's intra-op thread pool), up to 30x the forward pass of a small model; numpy's stay
    # near 30 us. The largest softmax probability of a row is 1 / sum(exp(logits - max)).
    if logits.dtype is not torch.float32 or logits.requires_grad:
        logits = logits.detach().to(torch.float32)
    values = logits.numpy()
    sums = np.exp(values - values.max(axis=-1, keepdims=True)).sum(axis=-1)
    return np.asarray(1.0 / sums).reshape(-1)


def _is_batch(value: Any, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch


def _observed(name: str, tensor: torch.Tensor) -> TensorContract:
    """An output's contract as warm-up saw it (fixed dimensions: what one run can tell)."""
    dtype = NAMES.get(tensor.dtype)
    if dtype is None:
        raise ConfigError(f"output {name!r} has dtype {tensor.dtype}, which cannot travel")
    return TensorContract(name, dtype, tuple(Dim.fixed(size) for size in tensor.shape[1:]))


# --- sources: factories and TorchScript files -------------------------------------------------


def build_with_factory(config: ModelConfig, cache_dir: Path) -> BuiltModel:
    """Call the config's factory with its options; ConfigError if they do not fit or it returns junk."""
    factory = load_factory(config.factory)
    try:
        inspect.signature(factory).bind(cache_dir=cache_dir, **config.options)
    except TypeError as exc:
        raise ConfigError(
            f"model {config.model_id}: factory {config.factory} does not take these options: {exc}"
        ) from None
    built = factory(cache_dir=cache_dir, **config.options)
    if not isinstance(built, BuiltModel):
        raise ConfigError(
            f"model {config.model_id}: factory {config.factory} returned {type(built).__name__}, "
            "expected atomic_p2p.peer.models.BuiltModel"
        )
    return built


def load_torchscript(config: ModelConfig) -> BuiltModel:
    """A TorchScript file, loaded on the CPU (HostedModel moves it), with the config's contract."""
    assert config.torchscript is not None and config.contract is not None  # ModelConfig checks both
    try:
        with warnings.catch_warnings():
            # torch deprecates TorchScript for torch.export; files people already have still load.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(config.torchscript), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ConfigError(
            f"model {config.model_id}: {config.torchscript} is not a TorchScript file "
            f"(save one with torch.jit.save): {exc}"
        ) from None
    accuracy = 0.0 if config.contract.kind.has_confidence else None
    return BuiltModel(module=module, contract=config.contract, validation_accuracy=accuracy)


_IMPORT_LOCK = threading.Lock()


def load_factory(spec: str) -> ModelFactory:
    """Resolve ``package.module:function`` or ``/path/file.py:function`` to the function."""
    target, _, function = spec.rpartition(":")
    try:
        module = _import_file(Path(target)) if target.endswith(".py") else importlib.import_module(target)
    except ImportError as exc:
        raise ConfigError(f"cannot import model factory {spec}: {exc}") from exc
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ConfigError(f"model factory {spec}: {target} has no function {function!r}")
    return factory


def _import_file(path: Path) -> Any:
    # One module object per file, so several models from one file share its loaded data.
    name = "atomic_p2p_factory_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with _IMPORT_LOCK:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
