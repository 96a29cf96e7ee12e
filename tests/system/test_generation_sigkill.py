"""A streamed generation whose winner is SIGKILLed mid-stream finishes on the runner-up: two real
``atomic-peer`` processes host a slow count-up LM; the favourite is killed after a few tokens."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from atomic_p2p.requester import Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.testing import peer_processes

pytestmark = pytest.mark.system

CAPABILITY = "generate/count"
VOCAB = 64
KILL_AFTER = 4  # tokens received from the favourite before its process is SIGKILLed
MAX_TOKENS = 30
STEP_S = 0.05  # each forward pass: 30 tokens take 1.5 s, so the kill lands mid-stream


def generator_table(name: str, confidence: float) -> dict[str, Any]:
    return {
        "peer": {"name": name, "port": 0},
        "models": [
            {
                "model_id": f"{name}-lm",
                "capabilities": [CAPABILITY],
                "factory": "atomic_p2p.testing:count_up_lm",
                "price_per_example": 0.001,
                "strategy": "fixed",
                "strategy_options": {"confidence": confidence},
                "options": {"vocab": VOCAB, "max_tokens": 64, "step_s": STEP_S},
            }
        ],
    }


async def test_a_winner_sigkilled_mid_stream_is_finished_by_the_runner_up(tmp_path: Path) -> None:
    tables = [generator_table("favourite", 0.95), generator_table("runner-up", 0.6)]
    async with peer_processes(tables, tmp_path) as (favourite, runner_up):
        async with Requester(
            [favourite.address, runner_up.address], evaluator=EvaluatorConfig.greedy()
        ) as requester:
            prompt = [60, 61]
            generation = requester.generate(CAPABILITY, prompt, max_tokens=MAX_TOKENS, deadline_s=20.0)
            tokens: list[int] = []
            killed = False

            async def consume() -> None:
                nonlocal killed
                async for chunk in generation:
                    tokens.extend(chunk.tokens)
                    if not killed and len(tokens) >= KILL_AFTER:
                        os.killpg(favourite.process.pid, signal.SIGKILL)
                        killed = True

            await asyncio.wait_for(consume(), 30.0)
            result = generation.result
        assert await asyncio.wait_for(favourite.process.wait(), 10.0) == -signal.SIGKILL
        assert runner_up.process.returncode is None  # the runner-up serves on

    expected = [(prompt[-1] + 1 + i) % VOCAB for i in range(MAX_TOKENS)]  # 62, 63, 0, 1, ...
    assert tokens == expected and list(result.tokens) == expected
    first, *_, last = result.parts
    assert first.bid.address == favourite.address and first.start == 0
    assert not first.verified and KILL_AFTER <= len(first.tokens) < MAX_TOKENS
    assert last.bid.address == runner_up.address and last.verified
    assert last.start + len(last.tokens) == MAX_TOKENS
    assert sum(len(part.tokens) for part in result.parts) == MAX_TOKENS
    assert [part.start for part in result.parts] == [0, *(p.start + len(p.tokens) for p in result.parts[:-1])]
