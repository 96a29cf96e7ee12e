"""The terms a hosted model is offered on: the inputs it accepts and what one call of it takes.

One type per concept, shared by everything that speaks of them: a peer's config
(``[models.constraints]``, ``[models.resources]``), its gossip advert
(:class:`~atomic_p2p.gossip.records.ModelAdvert`), every bid
(:class:`~atomic_p2p.requester.types.BidInfo`) and the evaluator, whose resource limit
(:attr:`~atomic_p2p.requester.evaluator.Ask.max_resources`) is a :class:`Resources` too.

Zero means "not declared" for every number here, and an empty ``supported_languages`` accepts any
language: proto3 cannot tell an unset field from 0, so 0 is how the wire says "no limit". A
``max_batch`` of 0 accepts any batch; a need of 0 needs nothing; a limit of 0 allows any amount.
A peer's config spells out its own defaults (``max_batch`` 256, ``cpu_cores`` 1.0) as the
defaults of its fields (:class:`~atomic_p2p.peer.config.ModelConfig`).

Nothing here imports protobuf; :mod:`atomic_p2p.protocol.wire` maps these to and from the
``ModelConstraints`` and ``ResourceRequirements`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelConstraints:
    """Hard limits on what a model accepts; 0 / empty means "not declared" (module docstring)."""

    max_input_tokens: int = 0
    supported_languages: tuple[str, ...] = ()
    max_batch: int = 0


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU cores, memory and GPU memory: what one call of a model takes from its host or, as a
    requester's limit, the most a bid may need. 0 means "not declared" / "no limit"."""

    cpu_cores: float = 0.0
    memory_mb: float = 0.0
    gpu_memory_mb: float = 0.0
