"""Fault injection: parsing, seeded loss and delay, and the status a dropped call shows."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from atomic_p2p.errors import ConfigError
from atomic_p2p.faults import FaultInjector, FaultPlan


def test_parse_and_validate() -> None:
    plan = FaultPlan.parse("delay_ms=50, jitter_ms=20,loss=0.1,seed=7")
    assert plan == FaultPlan(50.0, 20.0, 0.1, 7)
    assert plan.active and not FaultPlan.parse("").active
    for bad in ("loss=1.5", "delay_ms=-1", "speed=3", "loss=", "loss=abc"):
        with pytest.raises(ConfigError):
            FaultPlan.parse(bad)


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOMIC_P2P_FAULTS", "loss=0.25,seed=3")
    assert FaultPlan.from_env() == FaultPlan(loss=0.25, seed=3)


async def test_loss_rate_and_delay_are_as_planned() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def continuation(details: object, request: object) -> str:
        return "sent"

    injector = FaultInjector(FaultPlan(delay_ms=10, jitter_ms=5, loss=0.3, seed=1), sleep=sleep)
    outcomes = []
    for _ in range(2000):
        try:
            outcomes.append(await injector.intercept_unary_unary(continuation, None, None))
        except aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.UNAVAILABLE
            outcomes.append("dropped")
    dropped = outcomes.count("dropped")
    assert injector.dropped == dropped and 500 <= dropped <= 700  # 30% of 2000, within ~5 sigma
    assert len(slept) == 2000 - dropped
    assert all(0.010 <= s <= 0.015 for s in slept)


async def test_same_seed_same_faults() -> None:
    async def continuation(details: object, request: object) -> str:
        return "sent"

    async def nap(seconds: float) -> None:
        return None

    runs = []
    for _ in range(2):
        injector = FaultInjector(FaultPlan(loss=0.5, seed=42), sleep=nap)
        run = []
        for _ in range(50):
            try:
                await injector.intercept_unary_unary(continuation, None, None)
                run.append(True)
            except aio.AioRpcError:
                run.append(False)
        runs.append(run)
    assert runs[0] == runs[1] and not all(runs[0]) and any(runs[0])
