"""Generation models: a causal language model sold one token at a time over ExecuteStream.

How this works
--------------
A model factory marks a model as a generator by returning a :class:`BuiltModel` with
``generation=Generation(...)``: the module is any causal LM, ``module(ids: int64[B, T]) ->
logits[B, T, V]``, and :class:`Generation` states its vocabulary, the most tokens it generates per
order, its context length and an optional end token. A :class:`Decoder` decodes greedily (argmax of
the last position's logits) one step per :meth:`Decoder.step` call, so the servicer runs each step
in a worker thread and can stop between steps: a client that cancels costs at most the step in
progress. Each step runs the whole sequence again (no key-value cache): simple and bounded by the
context length; a model that needs a cache can bring its own decoder later.

Prompts are token ids (``int64[1, T]``), from the requester or from this peer's own tokenizer for a
text prompt (:mod:`atomic_p2p.peer.textgen`), so nothing here assumes how ids were made.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from atomic_p2p.errors import ExecutionError, ProtocolError


@dataclass(frozen=True, slots=True)
class Generation:
    """What a generation model declares (``BuiltModel.generation``)."""

    vocab_size: int
    max_tokens: int = 256  # the most tokens one order may ask for
    context: int = 1024  # prompt + prefix + generated tokens, at most
    end_token: int | None = None  # generation stops after producing it


def check_order(spec: Generation, prompt: torch.Tensor, prefix: Sequence[int], max_tokens: int) -> None:
    """Refuse (INVALID_ARGUMENT) an order the model cannot honour, before any work."""
    if not 0 < max_tokens <= spec.max_tokens:
        raise ProtocolError(f"max_tokens must be in [1, {spec.max_tokens}] for this model, got {max_tokens}")
    if prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ProtocolError(f"a prompt is int64[1, T] token ids, got shape {list(prompt.shape)}")
    length = prompt.shape[1] + len(prefix) + max_tokens
    if length > spec.context:
        raise ProtocolError(
            f"prompt, prefix and max_tokens make {length} tokens, over the context {spec.context}"
        )
    if prompt.numel() and not 0 <= int(prompt.min()) <= int(prompt.max()) < spec.vocab_size:
        raise ProtocolError(f"prompt token ids must be in [0, {spec.vocab_size})")
    if any(not 0 <= token < spec.vocab_size for token in prefix):
        raise ProtocolError(f"prefix token ids must be in [0, {spec.vocab_size})")


class Decoder:
    """Greedy decoding of one order, a step at a time (call :meth:`step` from one thread at a time)."""

    def __init__(
        self,
        module: torch.nn.Module,
        spec: Generation,
        ids: torch.Tensor,
        max_tokens: int,
        device: torch.device,
        model_id: str = "",
    ) -> None:
        self._module = module
        self._spec = spec
        self._ids = ids.to(device)
        self._left = max_tokens
        self._model_id = model_id
        self._ended = False
        self.compute_ms = 0.0

    def step(self) -> int | None:
        """The next token, or None once the budget is spent or the end token was produced."""
        if self._left <= 0 or self._ended:
            return None
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                logits = self._module(self._ids)
                token = int(logits[0, -1].argmax())
        except Exception as exc:  # the model's code is not ours: any failure is an execution error
            raise ExecutionError(f"model {self._model_id} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.compute_ms += (time.perf_counter() - started) * 1000
        next_id = torch.tensor([[token]], dtype=self._ids.dtype, device=self._ids.device)
        self._ids = torch.cat([self._ids, next_id], dim=1)
        self._left -= 1
        self._ended = token == self._spec.end_token
        return token
