"""The gateway in front of ``atomic-peer`` processes: ``atomic gateway`` with the demo's language
model peer and the ``openai`` package, and a winner SIGKILLed mid-stream while a client streams."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from atomic_p2p.gateway import Gateway
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.requester import BidPolicy, Requester
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.testing import peer_processes
from atomic_p2p.testing._text import ALPHABET
from peers.examples import example_table

pytestmark = pytest.mark.system

LISTENING = re.compile(r"^atomic gateway listening on (http://\S+)$")
METRICS = re.compile(r"^atomic gateway metrics on (http://\S+)$")
GOSSIP_INTERVAL_S = 0.2  # the in-process requester pulls often (and is slow to suspect, below)
PEER_INTERVAL_S = 1.0  # peers gossip at the default pace: slow to suspect each other on a busy box


async def test_atomic_gateway_chats_with_the_demo_language_model(tmp_path: Path) -> None:
    table = example_table("lm-small", gossip_interval_s=PEER_INTERVAL_S)
    async with peer_processes([table], tmp_path) as (peer,):
        log = (tmp_path / "gateway.log").open("wb")
        gateway = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "atomic_p2p.cli.main", "gateway", "--bootstrap", peer.address),
            *("--port", "0", "--no-store", "--metrics-port", "0"),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        try:
            assert gateway.stdout is not None
            line = (await asyncio.wait_for(gateway.stdout.readline(), 60.0)).decode().strip()
            listening = LISTENING.match(line)
            assert listening, (tmp_path / "gateway.log").read_text()
            line = (await asyncio.wait_for(gateway.stdout.readline(), 10.0)).decode().strip()
            serving_metrics = METRICS.match(line)
            assert serving_metrics, line
            async with openai.AsyncOpenAI(base_url=listening.group(1) + "/v1", api_key="none") as client:
                models = await _listed(client, {"generate/docstrings", "docstrings-lm"})
                assert {"generate/docstrings", "docstrings-lm"} <= models
                reply = await client.chat.completions.create(
                    model="generate/docstrings",
                    messages=[{"role": "user", "content": "Return the"}],
                    max_tokens=12,
                )
            scraped = await asyncio.to_thread(_fetch, serving_metrics.group(1))
        finally:
            if gateway.returncode is None:
                gateway.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(gateway.wait(), 20.0)
            log.close()
    content = reply.choices[0].message.content
    assert content is not None and 0 < len(content) <= 12 * 8  # 12 characters, each a token
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert reply.model_extra and reply.model_extra["atomic"]["model"] == "docstrings-lm"
    assert code == 0  # SIGTERM: calls finished, gossip left, store flushed
    # the gateway's purchase shows in its own metrics: one auction round, one first token
    rounds = re.search(r"^atomic_requester_auction_round_seconds_count (\S+)$", scraped, re.M)
    first_tokens = re.search(r"^atomic_requester_time_to_first_token_seconds_count (\S+)$", scraped, re.M)
    assert rounds is not None and float(rounds.group(1)) >= 1, scraped[:2000]
    assert first_tokens is not None and float(first_tokens.group(1)) == 1, scraped[:2000]


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def generator_table(name: str, confidence: float, **peer: Any) -> dict[str, Any]:
    return {
        "peer": {"name": name, "port": 0, "gossip_interval_s": PEER_INTERVAL_S, **peer},
        "models": [
            {
                "model_id": f"{name}-lm",
                "capabilities": ["generate/text"],
                "factory": "atomic_p2p.testing:text_generator",
                "price_per_example": 0.001,
                "strategy": "fixed",
                "strategy_options": {"confidence": confidence},
                "options": {"step_s": 0.05},  # 30 tokens take 1.5 s: the kill lands mid-stream
            }
        ],
    }


async def test_a_stream_goes_on_when_its_winner_is_sigkilled(tmp_path: Path) -> None:
    async with (
        peer_processes([generator_table("favourite", 0.95)], tmp_path) as (favourite,),
        peer_processes([generator_table("runner-up", 0.6, bootstrap=[favourite.address])], tmp_path) as (
            _runner_up,
        ),
    ):
        gossip = GossipConfig(interval=GOSSIP_INTERVAL_S, suspicion_mult=25.0)
        policy = BidPolicy(adaptive_tmax=False)  # both bids count, however busy the box
        requester = Requester(
            bootstrap=[favourite.address], gossip=gossip, evaluator=EvaluatorConfig.greedy(), bids=policy
        )
        async with requester:
            assert await requester.wait_for_peers("generate/text", 2, timeout=30.0)
            async with (
                Gateway(requester).serving() as url,
                openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as client,
            ):
                stream = await client.completions.create(
                    model="generate/text", prompt="a", max_tokens=30, stream=True
                )
                chunks = []
                async for chunk in stream:
                    chunks.append(chunk)
                    if len(chunks) == 4:
                        os.killpg(favourite.process.pid, signal.SIGKILL)
        assert await asyncio.wait_for(favourite.process.wait(), 10.0) == -signal.SIGKILL

    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == ALPHABET[1:31]  # after "a", count up 30 characters, across both peers
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length" and last.model_extra
    first_part, *_, last_part = last.model_extra["atomic"]["parts"]
    assert first_part["model"] == "favourite-lm" and not first_part["verified"] and first_part["tokens"] >= 4
    assert last_part["model"] == "runner-up-lm" and last_part["verified"]
    assert sum(part["tokens"] for part in last.model_extra["atomic"]["parts"]) == 30
    assert last.model_extra["atomic"]["model"] == "runner-up-lm"


async def _listed(client: openai.AsyncOpenAI, expected: set[str], within_s: float = 30.0) -> set[str]:
    """The gateway's model list once it holds ``expected``, or the last list after ``within_s``:
    a call on a cold start waits at most FIRST_EXCHANGE_S (2 s) for gossip's first exchange and
    then answers with what it knows, which on a loaded machine can still be nothing."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        models = {model.id async for model in client.models.list()}
        if expected <= models or asyncio.get_running_loop().time() > deadline:
            return models
        await asyncio.sleep(0.2)
