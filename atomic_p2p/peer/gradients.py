"""A peer's side of gradient bidding: its bid functions, what it bid on, and received gradients.

How this works
--------------
Seller-side (docs/gradient.md). In gradient mode (``BidRequest.gradient_mode``) a model whose
``[models.gradient]`` is enabled evaluates its bid function on the task's preview inputs and
signs the values into its Bid (``bid_values``, one per example). :class:`GradientBook`
remembers those inputs per (request id, task id), bounded and for as long as the bid itself is
remembered, so no autograd graph is held while the requester runs its market.

A BidGradient then meets :meth:`BidLearner.apply`, which checks everything before any parameter
moves: the role's gradient is present with one value per example (INVALID_ARGUMENT), every value
is finite (INVALID_ARGUMENT), its L2 norm is at most ``reject_norm`` (RESOURCE_EXHAUSTED; below it
the market learner clips to ``max_norm``), a dL/dy only for a model that opted into remote
training (FAILED_PRECONDITION). Then the learner takes one step (cooperative: descend dL/db;
competitive: ascend price * g - cost * b from dg/db) and the state is checkpointed atomically
(write a temporary file, then rename) to ``data_dir/bidfn/<model_id>.pt``, which is loaded again
at start, so a restart keeps what the bid function learnt. A model trained remotely (dL/dy) is
checkpointed the same way after each step it takes: its weights to ``data_dir/remote/<model_id>.pt``
(loaded over the factory's weights at start) and its optimiser's state beside them
(``<model_id>.optim.pt``; an optimiser whose state cannot be loaded safely starts afresh, with a
warning).
"""

from __future__ import annotations

import logging
import math
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atomic_p2p.errors import LimitExceededError, PreconditionError, ProtocolError, ReplayError, TensorError
from atomic_p2p.market import CompetitiveLearner, CooperativeLearner, FeedForwardBid, ScalarBid
from atomic_p2p.peer.config import GradientConfig
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.replay import ExpiringMap
from atomic_p2p.peer.training import save_atomically

CHECKPOINT_DIR = "bidfn"
MODEL_CHECKPOINT_DIR = "remote"
# The previews an ffnn bid function or remote training needs are kept until their bid is
# forgotten; this caps the memory they may take.
GRADIENT_MEMORY_BYTES = 256 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GradientUpdate:
    """A verified, parsed BidGradientUpdate's numbers (values not yet checked)."""

    loss_grad: torch.Tensor  # dL/db, [batch] (empty if not sent)
    share_grad: torch.Tensor  # dg/db, [batch] (empty if not sent)
    output_grad: torch.Tensor | None  # dL/dy, [batch, ...]
    price: float


class BidLearner:
    """One model's bid function and learner, checkpointed under the peer's data directory."""

    def __init__(self, model: HostedModel, checkpoint: Path, model_checkpoint: Path | None = None) -> None:
        self.model = model
        self.config: GradientConfig = model.config.gradient
        self.checkpoint = checkpoint
        self.model_checkpoint = model_checkpoint
        config = self.config
        bid_function: torch.nn.Module
        if config.bid_function == "ffnn":
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(config.seed)  # the same config starts from the same bid function
            bid_function = FeedForwardBid(math.prod(model.input_shape), config.hidden)
            torch.random.set_rng_state(generator_state)
        else:
            bid_function = ScalarBid(initial=config.initial_bid)
        options: dict[str, Any] = {
            "lr": config.lr,
            "max_norm": config.max_norm,
            "reject_norm": config.reject_norm,
            "anchor": config.anchor or None,
            "anchor_weight": config.anchor_weight,
        }
        self.learner: CooperativeLearner | CompetitiveLearner
        if config.role == "competitive":
            self.learner = CompetitiveLearner(bid_function, cost_per_bid=config.cost_per_bid, **options)
        else:
            self.learner = CooperativeLearner(bid_function, **options)
        self._model_optimizer: torch.optim.Optimizer | None = None
        self._model_stepped = False
        self._optimizer_state: dict[str, Any] | None = None  # loaded, applied when it is made
        if checkpoint.exists():
            self.learner.load_state_dict(torch.load(checkpoint, weights_only=True))
        if config.remote_training and model_checkpoint is not None and model_checkpoint.exists():
            self._load_model(model_checkpoint)

    @property
    def restored_optimizer_state(self) -> dict[str, Any] | None:
        """The model optimiser's state read from the checkpoint at start, until the first step
        makes the optimiser and hands it over (None: nothing was restored, or it was applied)."""
        return self._optimizer_state

    def _load_model(self, path: Path) -> None:
        module = self.model.module
        module.load_state_dict(torch.load(path, weights_only=True, map_location=self.model.device))
        optimizer_path = _optimizer_path(path)
        if optimizer_path.exists():
            try:
                self._optimizer_state = torch.load(optimizer_path, weights_only=True)
            except (pickle.UnpicklingError, RuntimeError) as error:
                log.warning(
                    "model %s: optimiser state in %s cannot be loaded safely (%s); it starts afresh",
                    self.model.model_id,
                    optimizer_path,
                    error,
                )

    @property
    def needs_preview(self) -> bool:
        """A network of the input cannot bid without seeing it, nor a model train on it; a scalar
        bid alone reads the batch length only."""
        return self.config.bid_function == "ffnn" or self.config.remote_training

    def bid(self, inputs: torch.Tensor) -> list[float]:
        return [float(value) for value in self.learner.bid(inputs.float())]

    def apply(self, inputs: torch.Tensor, update: GradientUpdate) -> float:
        """Check ``update`` against the ``inputs`` this peer bid on, learn from it, checkpoint.

        Returns the applied norm (after clipping). Raises before anything changes if it is bad.
        """
        batch = inputs.shape[0]
        cooperative = self.config.role == "cooperative"
        name, chosen = ("loss_grad", update.loss_grad) if cooperative else ("share_grad", update.share_grad)
        if chosen.numel() == 0:
            raise ProtocolError(f"a {self.config.role} peer learns from {name}; the update has none")
        for field, values in (("loss_grad", update.loss_grad), ("share_grad", update.share_grad)):
            if values.numel() and tuple(values.shape) != (batch,):
                raise TensorError(f"{field} has {values.numel()} values; the bid was for {batch} examples")
            _check_finite(field, values)
        norm = _checked_norm(name, chosen, self.config.reject_norm)
        if not (math.isfinite(update.price) and update.price >= 0):
            raise ProtocolError(f"price must be a finite number >= 0, got {update.price!r}")
        model_step = self._output_gradient(inputs, update.output_grad)
        if isinstance(self.learner, CompetitiveLearner):
            self.learner.learn(inputs.float(), chosen, update.price)
        else:
            self.learner.learn(inputs.float(), chosen)
        if model_step is not None:
            model_step()
        self.save()
        return min(norm, self.config.max_norm)

    def _output_gradient(
        self, inputs: torch.Tensor, gradient: torch.Tensor | None
    ) -> Callable[[], None] | None:
        """Check a dL/dy; return the model step to take once every check has passed."""
        if gradient is None:
            return None
        if not self.config.remote_training:
            raise PreconditionError(
                f"model {self.model.model_id} did not opt into remote training; send no output_grad"
            )
        module = self.model.module
        with torch.enable_grad():
            outputs = module(inputs.to(self.model.device))
        if tuple(gradient.shape) != tuple(outputs.shape):
            raise TensorError(
                f"output_grad has shape {list(gradient.shape)}; outputs are {list(outputs.shape)}"
            )
        _check_finite("output_grad", gradient)
        norm = _checked_norm("output_grad", gradient, self.config.reject_norm)
        scale = min(1.0, self.config.max_norm / norm) if norm > 0 else 1.0
        if self._model_optimizer is None:
            # A model may bring its own optimiser (the price-of-anarchy nodes replay TF1's Adam).
            own = getattr(module, "remote_optimizer", None)
            self._model_optimizer = (
                own() if callable(own) else torch.optim.SGD(module.parameters(), lr=self.config.model_lr)
            )
            if self._optimizer_state is not None:
                self._model_optimizer.load_state_dict(self._optimizer_state)
                self._optimizer_state = None
        optimizer = self._model_optimizer

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            outputs.backward((gradient * scale).to(dtype=outputs.dtype, device=outputs.device))
            optimizer.step()
            self._model_stepped = True

        return step

    def save(self) -> None:
        save_atomically(self.checkpoint, self.learner.state_dict())
        if self._model_stepped and self.model_checkpoint is not None and self._model_optimizer is not None:
            save_atomically(self.model_checkpoint, self.model.module.state_dict())
            save_atomically(_optimizer_path(self.model_checkpoint), self._model_optimizer.state_dict())
            self._model_stepped = False


def _optimizer_path(model_checkpoint: Path) -> Path:
    return model_checkpoint.with_name(f"{model_checkpoint.stem}.optim.pt")


def _check_finite(field: str, values: torch.Tensor) -> None:
    if not bool(torch.isfinite(values).all()):
        raise TensorError(f"{field} holds NaN or inf")


def _checked_norm(field: str, values: torch.Tensor, reject_norm: float) -> float:
    norm = float(values.detach().double().norm())
    if not math.isfinite(norm) or norm > reject_norm:
        raise LimitExceededError(f"{field} has norm {norm:.3g}, above this peer's limit {reject_norm:.3g}")
    return norm


def load_learners(models: Mapping[str, HostedModel], data_dir: Path) -> dict[str, BidLearner]:
    """A learner for every model with gradient bidding enabled, from its checkpoints if any (a
    remotely trained model's weights are loaded over what its factory built)."""
    return {
        model_id: BidLearner(
            model,
            data_dir / CHECKPOINT_DIR / f"{model_id}.pt",
            data_dir / MODEL_CHECKPOINT_DIR / f"{model_id}.pt",
        )
        for model_id, model in models.items()
        if model.config.gradient.enabled
    }


class GradientBook:
    """The inputs each gradient-mode bid was made on, and which bids already got their gradient.

    Bounded twice: at most ``capacity`` entries and ``max_bytes`` of tensors (previews can be
    large); a bid that would pass either is made without bid values instead.
    """

    def __init__(self, ttl_ms: int, capacity: int, max_bytes: int = GRADIENT_MEMORY_BYTES) -> None:
        self.ttl_ms = ttl_ms
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._inputs: OrderedDict[tuple[bytes, str], tuple[int, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._applied: ExpiringMap[tuple[bytes, str], None] = ExpiringMap(
            ttl_ms, capacity, "applied gradients"
        )

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def remember(self, request_id: bytes, task_id: str, inputs: torch.Tensor, now_ms: int) -> bool:
        """Keep ``inputs`` until the bid is forgotten; False (nothing kept) when over a bound."""
        self._prune(now_ms)
        size = _nbytes(inputs)
        if len(self._inputs) >= self.capacity or self._bytes + size > self.max_bytes:
            return False
        self._forget((request_id, task_id))
        self._inputs[(request_id, task_id)] = (now_ms + self.ttl_ms, inputs)
        self._bytes += size
        return True

    def _prune(self, now_ms: int) -> None:
        # One TTL for all, so insertion order is expiry order.
        while self._inputs:
            key, (expires_at, _) = next(iter(self._inputs.items()))
            if expires_at > now_ms:
                return
            self._forget(key)

    def _forget(self, key: tuple[bytes, str]) -> None:
        entry = self._inputs.pop(key, None)
        if entry is not None:
            self._bytes -= _nbytes(entry[1])

    def inputs(self, request_id: bytes, task_id: str, now_ms: int) -> torch.Tensor:
        key = (request_id, task_id)
        if self._applied.contains(key, now_ms):
            raise ReplayError("this bid already got its gradient; one gradient per request and task")
        self._prune(now_ms)
        entry = self._inputs.get(key)
        if entry is None:
            raise PreconditionError(
                "this peer never served a gradient-mode bid for that request and task (or forgot it)"
            )
        return entry[1]

    def applied(self, request_id: bytes, task_id: str, now_ms: int) -> None:
        """One gradient per bid: the next one for it is a replay."""
        self._applied.put((request_id, task_id), None, now_ms)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
