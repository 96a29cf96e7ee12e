#!/usr/bin/env python3
"""Benchmark: generation and tensor streaming through the market, against the floor beneath each.

    python scripts/bench_generate.py                # 50 rounds of 32 tokens, 64 MB x 5, JSON to out/
    python scripts/bench_generate.py --rounds 50 --tokens 64 --mb 16
    python scripts/bench_generate.py --bid-reuse-s 5   # the peer's bids reusable: cache-hit ttft

What is measured, all in one run so the noisy machine cancels out (docs/architecture.md section 11):

- **generation**: ``Requester.generate`` of ``--tokens`` tokens from the example ``lm-small`` peer
  (peers/lm-small.toml, a char-level GRU): time to first token (from the call, so it includes the
  auction) and tokens per second after the first message (the tokens after it over the time after
  it). Against it, the same weights decoded in this process with the same greedy
  :class:`~atomic_p2p.peer.generation.Decoder`, no gRPC and no market; and beside it the round
  trip of a bare unary gRPC call to the peer's process, since the auction and the order are two
  such trips before any token.
- **tensor streaming**: a ``--mb`` MB float32 output bought over ExecuteStream
  (``ExecutionPolicy(stream_outputs=True)``, 1 MiB slices; the whole ``Requester.run``, auction and
  verification included), against a bare grpc.aio server streaming the same bytes as 1 MiB raw
  messages (generic handler, no protobuf) to one channel. Beside them, the **floor**: the raw
  stream plus only the work the protocol cannot skip, done the cheapest way (the server makes the
  model's output with the same fill and hashes it once in a thread while sending; the client
  copies each message once into the output tensor and hashes it as it arrives). Raw gRPC does none
  of that work, so on a machine with fewer cores than busy threads the floor, not raw, bounds
  ExecuteStream.

The peer and the raw server run in one separate process (a real ``PeerNode`` on 127.0.0.1), so the
requester's event loop does only the requester's work. 64 MB is the peer's default tensor limit
(TensorLimits: 64 MiB, 16 Mi elements), so the default needs no raised limits.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the example peers: peers.examples, peers.text

from atomic_p2p.progress import progress as progress_bar  # noqa: E402

GENERATE = "generate/docstrings"
TENSOR = "bench/tensor"
MIB = 1024 * 1024
SLICE = MIB
RAW_METHOD = "/bench.Raw/Stream"
FLOOR_METHOD = "/bench.Raw/Floor"
ECHO_METHOD = "/bench.Raw/Echo"
PROMPT = "Return the number of "
TARGET_TTFT_EXTRA_MS = 5.0
TARGET_TOKENS_RATIO = 0.95
TARGET_STREAM_MB_S = 500.0
TARGET_STREAM_RATIO = 0.8


# --------------------------------------------------------------------------- peer side (child)
class _Fill(torch.nn.Module):
    def __init__(self, elements: int) -> None:
        super().__init__()
        self.elements = elements

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].expand(x.shape[0], self.elements).contiguous()


def big_tensor(cache_dir: Path, *, elements: int = 16 * MIB) -> object:
    """Model factory: ``x: float32[B, 1]`` filled out to ``float32[B, elements]``."""
    from atomic_p2p.peer import BuiltModel

    return BuiltModel(module=_Fill(elements), input_shape=(1,), validation_accuracy=0.9, output_name="y")


def peer_config(data_dir: Path, megabytes: int, bid_reuse_s: float = 0.0) -> object:
    import dataclasses

    from atomic_p2p.peer import ModelConfig
    from peers.examples import example_config

    config = example_config("lm-small", data_dir)
    tensor = ModelConfig(
        model_id="bench-tensor",
        capabilities=(TENSOR,),
        factory=f"{Path(__file__).resolve()}:big_tensor",
        price_per_example=0.001,
        strategy="fixed",
        strategy_options={"confidence": 0.9},
        options={"elements": megabytes * MIB // 4},
    )
    return dataclasses.replace(config, models=(*config.models, tensor), bid_reuse_ttl_s=bid_reuse_s)


async def serve(data_dir: Path, megabytes: int, bid_reuse_s: float) -> None:
    """Child process: the peer and the raw server; print both addresses, wait for EOF."""
    from atomic_p2p.peer import PeerNode

    payload = os.urandom(megabytes * MIB)

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        view = memoryview(payload)
        for start in range(0, len(view), SLICE):
            yield bytes(view[start : start + SLICE])

    fill = _Fill(megabytes * MIB // 4)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def floor(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """The bytes stream plus the work the protocol cannot skip, done the cheapest way: the
        model's output made (the same fill), hashed once in a thread while it is sent."""
        with torch.inference_mode():
            output = await asyncio.to_thread(fill, torch.ones(1, 1))
        view = memoryview(output.numpy()).cast("B")
        hashing = asyncio.ensure_future(asyncio.to_thread(lambda: hashlib.sha256(view).digest()))
        for start in range(0, len(view), SLICE):
            yield bytes(view[start : start + SLICE])
        yield await hashing

    handler = grpc.method_handlers_generic_handler(
        "bench.Raw",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Floor": grpc.unary_stream_rpc_method_handler(floor),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        },
    )
    raw = grpc.aio.server(options=[("grpc.max_send_message_length", 4 * MIB)])
    raw.add_generic_rpc_handlers((handler,))
    raw_port = raw.add_insecure_port("127.0.0.1:0")
    await raw.start()
    node = await PeerNode.start(peer_config(data_dir, megabytes, bid_reuse_s))
    print(json.dumps({"peer": node.dial_address, "raw": f"127.0.0.1:{raw_port}"}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await node.stop(grace=0.5)
    await raw.stop(0.5)


def start_server(
    data_dir: Path, megabytes: int, threads: int, bid_reuse_s: float = 0.0
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    command = [
        sys.executable,
        __file__,
        "--serve",
        "--data-dir",
        str(data_dir),
        "--mb",
        str(megabytes),
        "--threads",
        str(threads),
        "--bid-reuse-s",
        str(bid_reuse_s),
    ]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise SystemExit("the peer process failed to start; run with --serve to see why")
    return child, json.loads(line)


# --------------------------------------------------------------------------- measurements
def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.50), "p90": at(0.90), "mean": statistics.fmean(ordered), "n": len(ordered)}


def progress(rounds: int, label: str) -> object:
    return progress_bar(range(rounds), desc=label, unit="round", leave=False)


def timing(
    started: float, first: float, ended: float, tokens: int, first_tokens: int = 1
) -> tuple[float, float]:
    """(time to first token in ms, tokens per second after the first arrival): the tokens that
    arrived after the first message over the time after it (a first message holding several
    tokens does not count them as produced in no time)."""
    rest = ended - first
    return (first - started) * 1000, (tokens - first_tokens) / rest if rest > 0 else float("inf")


async def market_generation(requester: object, tokens: int) -> tuple[float, float]:
    started = time.perf_counter()
    first, count, first_tokens = 0.0, 0, 0
    async for chunk in requester.generate(GENERATE, PROMPT, max_tokens=tokens, deadline_s=30.0):
        if not count:
            first, first_tokens = time.perf_counter(), len(chunk.tokens)
        count += len(chunk.tokens)
    assert count == tokens, f"the peer produced {count} tokens, not {tokens}"
    return timing(started, first, time.perf_counter(), count, first_tokens)


def inprocess_generation(model: object, prompt: torch.Tensor, tokens: int) -> tuple[float, float]:
    from atomic_p2p.peer.generation import Decoder

    started = time.perf_counter()
    decoder = Decoder(model.module, model.generation, prompt, tokens, torch.device("cpu"))
    first, count = 0.0, 0
    while decoder.step() is not None:
        if not count:
            first = time.perf_counter()
        count += 1
    return timing(started, first, time.perf_counter(), count)


async def bench_generation(
    peer: str, raw: str, rounds: int, tokens: int, warmup: int
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The generation rows, and the round trip of a bare unary gRPC call to the peer's process
    (two of them, the auction's and the order's, lie under any market time to first token)."""
    from atomic_p2p.requester import Requester
    from peers.examples import weights_cache_dir
    from peers.text import char_lm

    model = char_lm(weights_cache_dir(), max_tokens=max(64, tokens))  # the peer's weights (cached)
    prompt = torch.tensor([model.tokenizer.ids(PROMPT)], dtype=torch.int64)
    market, local, trips = [], [], []
    channel = grpc.aio.insecure_channel(raw)
    echo = channel.unary_unary(ECHO_METHOD)
    async with channel, Requester([peer]) as requester:
        for _ in range(warmup):
            await market_generation(requester, tokens)
            inprocess_generation(model, prompt, tokens)
            await echo(PROMPT.encode())
        # Interleaved, in alternating order: drift hits both alike, and neither always runs right
        # after the other (the market's tail, its feedback to the peer, lands on the next run).
        for index in progress(rounds, "generation"):
            if index % 2:
                local.append(inprocess_generation(model, prompt, tokens))
            market.append(await market_generation(requester, tokens))
            if not index % 2:
                local.append(inprocess_generation(model, prompt, tokens))
            started = time.perf_counter()
            await echo(PROMPT.encode())
            trips.append((time.perf_counter() - started) * 1000)
    rows = {
        label: {
            "ttft_ms": percentiles([ttft for ttft, _ in samples]),
            "tokens_per_s": percentiles([rate for _, rate in samples]),
        }
        for label, samples in (("market", market), ("in_process", local))
    }
    return rows, percentiles(trips)


async def bench_stream(peer: str, raw: str, megabytes: int, repeats: int) -> dict[str, list[float]]:
    from atomic_p2p.requester import ExecutionPolicy, Requester

    size = megabytes * MIB
    x = torch.ones(1, 1)
    market, bare, floor = [], [], []
    channel = grpc.aio.insecure_channel(raw, options=[("grpc.max_receive_message_length", 4 * MIB)])
    call, floor_call = channel.unary_stream(RAW_METHOD), channel.unary_stream(FLOOR_METHOD)
    streaming = Requester([peer], execution=ExecutionPolicy(stream_outputs=True))
    async with channel, streaming:
        for index in progress(repeats + 1, "stream"):  # the first of each is a warm-up
            started = time.perf_counter()
            result = await streaming.run(TENSOR, {"x": x}, deadline_s=60.0, preview=False)
            elapsed = time.perf_counter() - started
            assert result.outputs["y"].numel() * 4 == size
            if index:
                market.append(size / MIB / elapsed)
            started = time.perf_counter()
            received = 0
            async for message in call(b""):
                received += len(message)
            elapsed = time.perf_counter() - started
            assert received == size
            if index:
                bare.append(size / MIB / elapsed)
            started = time.perf_counter()
            await floor_stream(floor_call, size)
            elapsed = time.perf_counter() - started
            if index:
                floor.append(size / MIB / elapsed)
    return {"market": market, "raw": bare, "floor": floor}


async def floor_stream(call: object, size: int) -> None:
    """The receiving end of the floor: each message copied once into the output tensor's memory
    and hashed as it arrives, the digest compared at the end (what a requester cannot skip)."""
    output = torch.empty(size, dtype=torch.uint8)
    view = memoryview(output.numpy()).cast("B")
    hasher, received = hashlib.sha256(), 0
    async for message in call(b""):
        if received == size:
            assert message == hasher.digest(), "the floor's digest does not match"
            return
        view[received : received + len(message)] = message
        hasher.update(message)
        received += len(message)
    raise AssertionError("the floor stream ended without its digest")


# --------------------------------------------------------------------------- report
def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(
    generation: dict, stream: dict[str, list[float]], round_trip: dict[str, float], args: argparse.Namespace
) -> dict:
    market, local = generation["market"], generation["in_process"]
    stream_mb_s, raw_mb_s = statistics.median(stream["market"]), statistics.median(stream["raw"])
    floor_mb_s = statistics.median(stream["floor"])
    ratios = {
        "ttft_extra_ms_p50": market["ttft_ms"]["p50"] - local["ttft_ms"]["p50"],
        "ttft_extra_ms_p90": market["ttft_ms"]["p90"] - local["ttft_ms"]["p90"],
        "tokens_per_s": market["tokens_per_s"]["p50"] / local["tokens_per_s"]["p50"],
        "stream_vs_raw": stream_mb_s / raw_mb_s,
        "stream_vs_floor": stream_mb_s / floor_mb_s,
        "floor_vs_raw": floor_mb_s / raw_mb_s,
    }
    print(
        f"\ngeneration benchmark: lm-small peer in a separate process (PeerNode on 127.0.0.1), "
        f"{args.rounds} rounds of {args.tokens} tokens, {args.threads} torch thread(s), "
        f"bid reuse {args.bid_reuse_s:g} s"
    )
    print(f"  {'what':<14}{'ttft p50 ms':>13}{'ttft p90 ms':>13}{'tok/s p50':>11}{'tok/s p90':>11}")
    for label, row in (("market", market), ("in-process", local)):
        ttft, rate = row["ttft_ms"], row["tokens_per_s"]
        print(
            f"  {label:<14}{ttft['p50']:>13.2f}{ttft['p90']:>13.2f}{rate['p50']:>11.0f}{rate['p90']:>11.0f}"
        )
    print(
        f"  raw gRPC round trip to the peer's process: p50 {round_trip['p50']:.2f} ms; the market's first"
        f" token needs two (auction, order): in-process + 2 trips = {local['ttft_ms']['p50'] + 2 * round_trip['p50']:.2f} ms"
    )
    print(f"\nstream benchmark: {args.mb} MB float32, {args.repeats} repeats (median)")
    print(f"  ExecuteStream (market)   {stream_mb_s:>9.0f} MB/s")
    print(f"  raw gRPC bytes stream    {raw_mb_s:>9.0f} MB/s")
    print(
        f"  raw + required work      {floor_mb_s:>9.0f} MB/s   (the floor: fill, sha256 each end, one copy;"
        f" {ratios['floor_vs_raw']:.2f}x raw)"
    )
    extra, tokens_ratio, stream_ratio = (
        ratios["ttft_extra_ms_p50"],
        ratios["tokens_per_s"],
        ratios["stream_vs_raw"],
    )
    print("\n  what                                measured   target")
    print(
        f"  ttft market - in-process, p50   {extra:>9.2f} ms   <= {TARGET_TTFT_EXTRA_MS:g} ms     {met(extra <= TARGET_TTFT_EXTRA_MS)}"
    )
    print(
        f"  tokens/s market / in-process    {tokens_ratio:>9.2f}x    >= {TARGET_TOKENS_RATIO}x     {met(tokens_ratio >= TARGET_TOKENS_RATIO)}"
    )
    print(
        f"  ExecuteStream MB/s              {stream_mb_s:>9.0f}      >= {TARGET_STREAM_MB_S:g}      {met(stream_mb_s >= TARGET_STREAM_MB_S)}"
    )
    print(
        f"  ExecuteStream / raw gRPC        {stream_ratio:>9.2f}x    >= {TARGET_STREAM_RATIO}x      {met(stream_ratio >= TARGET_STREAM_RATIO)}"
    )
    print(
        f"  ExecuteStream / floor           {ratios['stream_vs_floor']:>9.2f}x    (no target: how close to it)"
    )
    print(f"\n  load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
    flat = {
        label: {
            f"{metric}_{q}": row[metric][q] for metric in ("ttft_ms", "tokens_per_s") for q in ("p50", "p90")
        }
        for label, row in generation.items()
    }
    return {
        "rounds": args.rounds,
        "tokens": args.tokens,
        "mb": args.mb,
        "repeats": args.repeats,
        "threads": args.threads,
        "bid_reuse_s": args.bid_reuse_s,
        "peer": "lm-small + bench-tensor in one separate process (PeerNode), requester here",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "generation": flat,
        "generation_detail": generation,
        "raw_round_trip_ms": round_trip,
        "stream": {
            "mb_per_s": stream_mb_s,
            "raw_mb_per_s": raw_mb_s,
            "floor_mb_per_s": floor_mb_s,
            "samples": stream,
        },
        "load_average_1m": os.getloadavg()[0],  # other work on the machine while this ran
        "ratios": ratios,
        "targets": {
            "ttft_extra_ms_p50": [TARGET_TTFT_EXTRA_MS, extra <= TARGET_TTFT_EXTRA_MS],
            "tokens_per_s": [TARGET_TOKENS_RATIO, tokens_ratio >= TARGET_TOKENS_RATIO],
            "stream_mb_per_s": [TARGET_STREAM_MB_S, stream_mb_s >= TARGET_STREAM_MB_S],
            "stream_vs_raw": [TARGET_STREAM_RATIO, stream_ratio >= TARGET_STREAM_RATIO],
        },
    }


async def measure(addresses: dict[str, str], args: argparse.Namespace) -> tuple[dict, dict, dict]:
    generation, round_trip = await bench_generation(
        addresses["peer"], addresses["raw"], args.rounds, args.tokens, warmup=min(3, args.rounds)
    )
    stream = await bench_stream(addresses["peer"], addresses["raw"], args.mb, args.repeats)
    return generation, stream, round_trip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=50, help="generations bought (and decoded in-process)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per generation (lm-small sells <= 64)")
    parser.add_argument(
        "--mb", type=int, default=64, help="MiB of float32 output streamed (<= 64: the peer's limit)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="streamed outputs timed (the median is reported)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, in the peer and in-process alike"
    )
    parser.add_argument(
        "--bid-reuse-s",
        type=float,
        default=0.0,
        help="the peer's bid_reuse_ttl_s (0, as lm-small ships: every generation is auctioned; > 0: "
        "the requester's bid cache answers repeat auctions, the time to first token on cache hits)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench_generate.json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # two processes on a few cores: more threads only contend
    if args.serve:
        asyncio.run(serve(args.data_dir, args.mb, args.bid_reuse_s))
        return 0
    if not 1 <= args.tokens <= 64 or not 1 <= args.mb <= 64 or args.rounds < 1 or args.repeats < 1:
        parser.error("need 1 <= --tokens <= 64, 1 <= --mb <= 64, --rounds and --repeats >= 1")
    with tempfile.TemporaryDirectory(prefix="atomic-bench-") as tmp:
        child, addresses = start_server(Path(tmp), args.mb, args.threads, args.bid_reuse_s)
        try:
            generation, stream, round_trip = asyncio.run(measure(addresses, args))
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=30)
    document = report(generation, stream, round_trip, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
