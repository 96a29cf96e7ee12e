"""Hosted models: a torch module plus what the node must know to sell it.

A model factory (named in the config as ``package.module:function`` or ``file.py:function``) is
called as ``factory(cache_dir=Path, **options)`` and returns a :class:`BuiltModel`: the module,
its input spec and its measured held-out accuracy. :class:`HostedModel` moves the module to CUDA
when there is one (else the CPU), puts it in eval mode, validates every decoded input against
the spec, and runs it under ``torch.inference_mode`` from worker threads (torch releases the GIL
while it computes, so one node runs several calls at once).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atomic_p2p.errors import ConfigError, ExecutionError, TensorError
from atomic_p2p.peer.config import ModelConfig
from atomic_p2p.peer.generation import Decoder, Generation, check_order
from atomic_p2p.peer.strategies import Strategy, make_strategy
from atomic_p2p.tensors import DTYPES, NAMES

WARM_UP_BATCH = 8
LATENCY_EWMA_ALPHA = 0.2


@dataclass(frozen=True, slots=True)
class BuiltModel:
    """What a model factory returns."""

    module: torch.nn.Module
    # Shape of one example, without the batch dimension, e.g. (64,).
    input_shape: tuple[int, ...]
    input_dtype: str = "float32"
    # Accuracy on a held-out split, in [0, 1]; strategies quote it when they cannot look at data.
    validation_accuracy: float = 0.0
    # Held-out accuracy per class (empty if not measured); specialists show their domain here.
    class_accuracy: tuple[float, ...] = ()
    input_name: str = "x"
    output_name: str = "logits"
    # Set for a causal LM sold over ExecuteStream (atomic_p2p/peer/generation.py); its input is a
    # prompt of token ids, int64[1, T] with T up to the context ("input_shape" is then (1,)).
    generation: Generation | None = None


ModelFactory = Callable[..., BuiltModel]


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class LatencyEwma:
    """Exponentially weighted mean of call latency, in milliseconds."""

    def __init__(self, alpha: float = LATENCY_EWMA_ALPHA) -> None:
        self.alpha = alpha
        self.value = 0.0
        self._seen = False

    def add(self, sample_ms: float) -> None:
        # Updated from worker threads without a lock: a lost update only delays the average a bit.
        if not self._seen:
            self.value, self._seen = sample_ms, True
        else:
            self.value += self.alpha * (sample_ms - self.value)


class HostedModel:
    """One model this node serves (implements :class:`~atomic_p2p.peer.strategies.ModelView`)."""

    def __init__(self, config: ModelConfig, built: BuiltModel, device: torch.device | None = None) -> None:
        if built.input_dtype not in DTYPES:
            raise ConfigError(f"model {config.model_id}: input dtype {built.input_dtype!r} cannot travel")
        self.config = config
        self.device = device or default_device()
        self.module = built.module.to(self.device).eval()
        self.input_name = built.input_name
        self.input_dtype = built.input_dtype
        self.input_shape = tuple(built.input_shape)
        self.output_name = built.output_name
        self.validation_accuracy = float(built.validation_accuracy)
        self.class_accuracy = built.class_accuracy
        self.generation = built.generation
        self.strategy: Strategy = make_strategy(config.strategy, config.strategy_options)
        self.latency = LatencyEwma()
        self._warm_up()

    @classmethod
    def load(cls, config: ModelConfig, cache_dir: Path, device: torch.device | None = None) -> HostedModel:
        """Call the config's factory (which may train, or load cached weights) and host the result."""
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
        return cls(config, built, device)

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
        return self.config.constraints.max_input_tokens

    @property
    def supported_languages(self) -> tuple[str, ...]:
        return self.config.constraints.supported_languages

    @property
    def price_per_example(self) -> float:
        return self.config.price_per_example

    @property
    def expected_latency_ms(self) -> float:
        return self.latency.value + self.config.extra_latency_ms

    def spec_problem(self, name: str, dtype: str, shape: tuple[int, ...]) -> str | None:
        if self.generation is not None:
            return self._prompt_problem(name, dtype, shape, self.generation)
        expected = f"{self.input_dtype}[B, {', '.join(map(str, self.input_shape))}]"
        if name != self.input_name:
            return f"{self.model_id} takes one input named {self.input_name!r}, got {name!r}"
        if dtype != self.input_dtype:
            return f"{self.model_id} takes {expected}, got dtype {dtype}"
        if len(shape) != 1 + len(self.input_shape) or tuple(shape[1:]) != self.input_shape:
            return f"{self.model_id} takes {expected}, got shape {list(shape)}"
        if shape[0] < 1:
            return f"{self.model_id} needs a batch of at least one example, got shape {list(shape)}"
        return None

    def _prompt_problem(self, name: str, dtype: str, shape: tuple[int, ...], spec: Generation) -> str | None:
        if name != self.input_name or dtype != "int64" or len(shape) != 2 or shape[0] != 1:
            return f"{self.model_id} takes one prompt {self.input_name!r}: int64[1, T] token ids"
        if not 1 <= shape[1] < spec.context:
            return f"{self.model_id} takes prompts of 1 to {spec.context - 1} tokens, got {shape[1]}"
        return None

    def decoder(self, prompt: torch.Tensor, prefix: Sequence[int], max_tokens: int) -> Decoder:
        """A greedy decoder after ``prompt || prefix`` (a generation model only; orders checked)."""
        if self.generation is None:
            raise ExecutionError(f"model {self.model_id} does not generate")
        check_order(self.generation, prompt, prefix, max_tokens)
        ids = torch.cat([prompt, torch.tensor([list(prefix)], dtype=torch.int64)], dim=1)
        return Decoder(self.module, self.generation, ids, max_tokens, self.device, self.model_id)

    def preview_confidence(self, preview: Sequence[torch.Tensor]) -> float:
        with torch.inference_mode():
            logits = self.module(torch.cat(list(preview)).to(self.device))
            return float(torch.softmax(logits.float(), dim=-1).amax(dim=-1).mean())

    def preview_classes(self, preview: Sequence[torch.Tensor]) -> list[int]:
        """The class the model predicts for each preview row (specialization strategies ask)."""
        with torch.inference_mode():
            logits = self.module(torch.cat(list(preview)).to(self.device))
            return [int(c) for c in logits.argmax(dim=-1).tolist()]

    # --- execution ----------------------------------------------------------------------------

    def check_inputs(self, named: Sequence[tuple[str, torch.Tensor]]) -> torch.Tensor:
        """The one input tensor, after checking names, dtype and shape (TensorError otherwise)."""
        if len(named) != 1:
            raise TensorError(f"{self.model_id} takes exactly one input tensor, got {len(named)}")
        name, tensor = named[0]
        dtype = NAMES[tensor.dtype]
        problem = self.spec_problem(name, dtype, tuple(tensor.shape))
        if problem is not None:
            raise TensorError(problem)
        if tensor.shape[0] > self.max_batch:
            raise TensorError(f"batch {tensor.shape[0]} exceeds max_batch {self.max_batch}")
        return tensor

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """Forward pass on the model's device; call from a worker thread. Returns CPU outputs."""
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                outputs = self.module(inputs.to(self.device)).to("cpu")
        except Exception as exc:  # the model's code is not ours: any failure is an execution error
            raise ExecutionError(f"model {self.model_id} failed: {type(exc).__name__}: {exc}") from exc
        self.latency.add((time.perf_counter() - started) * 1000)
        if self.config.extra_latency_ms:
            time.sleep(self.config.extra_latency_ms / 1000)
        if not isinstance(outputs, torch.Tensor) or outputs.shape[:1] != inputs.shape[:1]:
            raise ExecutionError(f"model {self.model_id} returned something other than a [B, ...] tensor")
        return outputs

    def _warm_up(self) -> None:
        # The first call allocates; time the second so the first bid quotes a realistic latency.
        batch = torch.zeros(
            (min(WARM_UP_BATCH, self.max_batch), *self.input_shape), dtype=DTYPES[self.input_dtype]
        )
        for _ in range(2):
            started = time.perf_counter()
            with torch.inference_mode():
                self.module(batch.to(self.device)).to("cpu")
        self.latency.add((time.perf_counter() - started) * 1000)


# --- factories ---------------------------------------------------------------------------------

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
