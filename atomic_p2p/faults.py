"""Fault injection in atomic-p2p's own transport: delay, jitter and loss on outgoing calls.

How this works
--------------
This kernel has no ``netem`` qdisc, so the testnet cannot ask the network to misbehave; instead
every outgoing unary call goes through :class:`FaultInjector`, a grpc.aio client interceptor. For
each call it draws from a seeded RNG: with probability ``loss`` the call is dropped before it
leaves (the caller sees ``UNAVAILABLE``, exactly what a lost connection looks like), otherwise it
is held for ``delay_ms`` plus a uniform ``jitter_ms`` and then sent. Only the sender is affected,
so a plan on one node models a bad uplink; plans on every node model a lossy network.

Configured per process from the command line (``atomic-peer --fault-loss 0.1``) or, for any
program using the SDK, from ``ATOMIC_P2P_FAULTS="delay_ms=50,jitter_ms=20,loss=0.1,seed=7"``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import grpc
from grpc import aio

from atomic_p2p.errors import ConfigError

ENV_VAR = "ATOMIC_P2P_FAULTS"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ConfigError("fault delay_ms and jitter_ms must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise ConfigError("fault loss must be a probability in [0, 1)")

    @property
    def active(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss > 0

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """``"delay_ms=50,jitter_ms=20,loss=0.1,seed=7"`` (any subset)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key not in known or not value:
                raise ConfigError(
                    f"bad fault setting {part!r}; use e.g. delay_ms=50,jitter_ms=20,loss=0.1,seed=7"
                )
            try:
                values[key] = int(value) if key == "seed" else float(value)
            except ValueError:
                raise ConfigError(f"fault setting {key} must be a number, got {value!r}") from None
        return cls(**values)

    @classmethod
    def from_env(cls) -> FaultPlan:
        return cls.parse(os.environ.get(ENV_VAR, ""))


class FaultInjector(aio.UnaryUnaryClientInterceptor):
    """Drops or delays outgoing unary calls according to a :class:`FaultPlan`."""

    def __init__(self, plan: FaultPlan, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.plan = plan
        self.dropped = 0
        self.delayed = 0
        self._rng = random.Random(plan.seed)
        self._sleep = sleep

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if self.plan.loss and self._rng.random() < self.plan.loss:
            self.dropped += 1
            raise aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                aio.Metadata(),
                aio.Metadata(),
                details=f"dropped by fault injection (loss {self.plan.loss:g})",
            )
        delay = self.plan.delay_ms + self._rng.uniform(0.0, self.plan.jitter_ms)
        if delay > 0:
            self.delayed += 1
            await self._sleep(delay / 1000)
        return await continuation(details, request)
