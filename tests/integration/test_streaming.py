"""ExecuteStream over real gRPC on 127.0.0.1: generated tokens streamed and verified, and an output
larger than the peer's message limit carried in slices (docs/protocol.md section 10)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import pytest
import torch

from atomic_p2p.cli.generate import choose_prompt, parse_prompt
from atomic_p2p.errors import AuctionError, ConfigError
from atomic_p2p.peer.config import ModelConfig, PeerConfig
from atomic_p2p.peer.node import PeerNode
from atomic_p2p.protocol import codec
from atomic_p2p.protocol.messages import ExecuteResult
from atomic_p2p.requester import ExecutionPolicy, Requester
from atomic_p2p.testing import generator_config, text_generator_config
from tests.support.waiting import eventually

pytestmark = [pytest.mark.integration]

STAGE_MODELS = Path(__file__).resolve().parent / "stage_models.py"
MIB = 1024 * 1024


async def test_tokens_stream_over_grpc_and_the_signed_result_covers_them(tmp_path: Path) -> None:
    config = generator_config("counter", tmp_path, port=0)
    async with await PeerNode.start(config) as node, Requester([node.address]) as requester:
        generation = requester.generate("generate/count", [10, 11], max_tokens=8, deadline_s=10.0)
        tokens = [token async for chunk in generation for token in chunk.tokens]
        result = generation.result
    assert tokens == list(range(12, 20)) and result.tokens == tuple(tokens)
    (part,) = result.parts
    assert part.receipt is not None and part.bid.address == node.address
    signer, signed = codec.open_signed(part.receipt, ExecuteResult)
    assert signer == node.identity.peer_id and signed.model_id == "counter-lm"


async def test_an_output_over_the_message_limit_arrives_in_slices(tmp_path: Path) -> None:
    model = ModelConfig(
        model_id="repeat",
        capabilities=("repeat/wide",),
        factory=f"{STAGE_MODELS}:repeat",
        price_per_example=0.001,
        strategy="fixed",
        strategy_options={"confidence": 0.9},
    )
    config = PeerConfig(name="wide", models=(model,), data_dir=tmp_path / "wide", max_message_bytes=2 * MIB)
    x = torch.rand(1, 64)
    async with await PeerNode.start(config) as node:
        streaming = Requester([node.address], execution=ExecutionPolicy(stream_outputs=True))
        async with streaming:
            result = await streaming.run("repeat/wide", {"x": x}, deadline_s=20.0, preview=False)
        output = result.outputs["y"]
        assert output.shape == (1, 64 * 16384) and output.numel() * 4 == 4 * MIB
        assert torch.equal(output, x.repeat(1, 16384))
        async with Requester([node.address]) as unary:
            with pytest.raises(AuctionError, match="RESOURCE_EXHAUSTED"):
                await unary.run("repeat/wide", {"x": x}, deadline_s=20.0, preview=False)


async def test_an_input_over_the_message_limit_travels_in_slices_after_the_order(tmp_path: Path) -> None:
    model = ModelConfig(
        model_id="echo",
        capabilities=("echo/wide",),
        factory=f"{STAGE_MODELS}:repeat",
        price_per_example=0.001,
        strategy="fixed",
        strategy_options={"confidence": 0.9},
        options={"features": MIB, "times": 1},  # float32[1, 1 Mi]: a 4 MiB input, and output
    )
    config = PeerConfig(name="wide", models=(model,), data_dir=tmp_path / "wide", max_message_bytes=2 * MIB)
    x = torch.rand(1, MIB)
    async with await PeerNode.start(config) as node:
        uploading = Requester([node.address], execution=ExecutionPolicy(stream_inputs=True))
        async with uploading:
            result = await uploading.run("echo/wide", {"x": x}, deadline_s=20.0, preview=False)
        assert torch.equal(result.outputs["y"], x)
        async with Requester([node.address], execution=ExecutionPolicy(stream_outputs=True)) as unary_input:
            with pytest.raises(AuctionError, match="RESOURCE_EXHAUSTED"):
                await unary_input.run("echo/wide", {"x": x}, deadline_s=20.0, preview=False)


async def test_a_client_that_cancels_stops_the_peers_generation_and_it_serves_on(tmp_path: Path) -> None:
    config = generator_config("slow", tmp_path, port=0, step_s=0.02, max_concurrency=1)
    async with await PeerNode.start(config) as node, Requester([node.address]) as requester:
        (model,) = node.models.values()
        before = model.module.calls
        async with requester.generate("generate/count", [1], max_tokens=60, deadline_s=10.0) as generation:
            await anext(generation)
            await anext(generation)
        await eventually(lambda: node.workers.load().in_flight == 0, what="the stream's slot freed")
        stopped_at = model.module.calls
        await asyncio.sleep(0.2)  # ten steps' time: nothing runs on
        assert model.module.calls == stopped_at
        assert stopped_at - before <= 6  # the two received, a few in flight: not the 60 ordered
        result = await requester.generate("generate/count", [5], max_tokens=3, deadline_s=10.0).collect()
    assert result.tokens == (6, 7, 8)


async def test_atomic_generate_streams_tokens_to_the_terminal(tmp_path: Path) -> None:
    config = generator_config("counter", tmp_path, port=0)
    async with await PeerNode.start(config) as node:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "atomic_p2p.cli.main",
            "generate",
            "--peer",
            node.address,
            "--capability",
            "generate/count",
            "--prompt-ids",
            "3, 4",
            "--max-tokens",
            "4",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().split() == ["5", "6", "7", "8"]
    assert "tokens [0, 4) from" in stderr.decode() and "verified" in stderr.decode()


async def test_atomic_generate_streams_text_to_the_terminal(tmp_path: Path) -> None:
    config = text_generator_config("chars", tmp_path, tokenizer="char", port=0)
    async with await PeerNode.start(config) as node:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "atomic_p2p.cli.main",
            "generate",
            "--peer",
            node.address,
            "--capability",
            "generate/text",
            "--max-tokens",
            "4",
            "abc",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode() == "defg\n"
    assert "text 'defg' from" in stderr.decode() and "verified" in stderr.decode()


def test_prompt_ids_are_parsed_strictly() -> None:
    assert parse_prompt("1, 2,3,") == [1, 2, 3]
    for bad in ("", "1,x", "1.5"):
        with pytest.raises(ConfigError):
            parse_prompt(bad)


def test_a_prompt_is_text_or_ids_never_both_nor_neither() -> None:
    assert choose_prompt(argparse.Namespace(prompt="hi", prompt_ids=None)) == "hi"
    assert choose_prompt(argparse.Namespace(prompt=None, prompt_ids="1,2")) == [1, 2]
    for prompt, ids in (("hi", "1"), (None, None), ("", None)):
        with pytest.raises(ConfigError):
            choose_prompt(argparse.Namespace(prompt=prompt, prompt_ids=ids))
