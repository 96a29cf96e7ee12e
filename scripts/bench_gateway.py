#!/usr/bin/env python3
"""Benchmark: the OpenAI-compatible gateway's overhead against the same purchase through the SDK.

    python scripts/bench_gateway.py                 # 40 rounds of 100 tokens, JSON to out/
    python scripts/bench_gateway.py --rounds 100 --tokens 100 --step-ms 2

What is measured, all in one run so the noisy machine cancels out (docs/architecture.md section 11):
a streamed generation of ``--tokens`` tokens from one ``atomic-peer`` process (the count-up text
generator of :mod:`atomic_p2p.testing`, ``--step-ms`` per token: 0 by default, the worst case for
the gateway's share), bought

- **sdk**: by ``Requester.generate`` in this process (joined to the gossip, as the gateway is);
- **gateway (httpx)**: through ``atomic gateway`` (a separate process, as deployed) with a raw
  streaming HTTP client reading the server-sent events;
- **gateway (openai)**: the same through the official ``openai`` package (its own parsing counts).

Each round buys once each way, in a rotating order. Time to first token runs from the call to
the first piece of text; total time to the end of the stream (``[DONE]``, or the SDK's verified
result). Every answer's text is checked against the SDK's. Target: the gateway (httpx) at
<= 1.2x the SDK at p50, for time to first token and for total time. Beside the ratio of the
p50s, the median of the per-round ratios (each gateway purchase over the SDK purchase of its
round) is printed: on a shared machine it is the steadier of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atomic_p2p.errors import AtomicError  # noqa: E402
from atomic_p2p.gossip import GossipConfig  # noqa: E402
from atomic_p2p.requester import Requester  # noqa: E402
from atomic_p2p.testing import peer_processes  # noqa: E402

CAPABILITY = "bench/text"
PROMPT = "a"
TARGET_RATIO = 1.2
LISTENING = re.compile(r"^atomic gateway listening on (http://\S+)$")
GOSSIP = GossipConfig(interval=0.2, suspicion_mult=25.0)


def peer_table(tokens: int, step_ms: float) -> dict[str, Any]:
    return {
        "peer": {"name": "bench-lm", "port": 0, "max_concurrency": 2},
        "models": [
            {
                "model_id": "bench-lm",
                "capabilities": [CAPABILITY],
                "factory": "atomic_p2p.testing:text_generator",
                "price_per_example": 0.001,
                "strategy": "fixed",
                "strategy_options": {"confidence": 0.9},
                "options": {"max_tokens": tokens, "context": tokens + 64, "step_s": step_ms / 1000},
            }
        ],
    }


class PurchaseFailed(Exception):
    """A purchase through the gateway that got an error status instead of a stream."""


Timed = tuple[float, float, str]  # (time to first token ms, total ms, text)


async def via_sdk(requester: Requester, tokens: int) -> Timed:
    started = time.perf_counter()
    first = 0.0
    generation = requester.generate(CAPABILITY, PROMPT, max_tokens=tokens, deadline_s=30.0)
    async with generation:
        async for chunk in generation:
            if not first and chunk.text:
                first = time.perf_counter()
    ended = time.perf_counter()
    return (first - started) * 1000, (ended - started) * 1000, generation.result.text


async def via_httpx(http: httpx.AsyncClient, tokens: int) -> Timed:
    body = {"model": CAPABILITY, "prompt": PROMPT, "max_tokens": tokens, "stream": True}
    started = time.perf_counter()
    first = 0.0
    pieces = []
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise PurchaseFailed(
                f"gateway answered {response.status_code}: {(await response.aread())[:300]!r}"
            )
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0]["text"] if '"choices":[{' in line else ""
            if text and not first:
                first = time.perf_counter()
            pieces.append(text)
    ended = time.perf_counter()
    return (first - started) * 1000, (ended - started) * 1000, "".join(pieces)


async def via_openai(client: openai.AsyncOpenAI, tokens: int) -> Timed:
    started = time.perf_counter()
    first = 0.0
    pieces = []
    stream = await client.completions.create(model=CAPABILITY, prompt=PROMPT, max_tokens=tokens, stream=True)
    async for chunk in stream:
        text = chunk.choices[0].text if chunk.choices else ""
        if text and not first:
            first = time.perf_counter()
        pieces.append(text)
    ended = time.perf_counter()
    return (first - started) * 1000, (ended - started) * 1000, "".join(pieces)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.50), "p99": at(0.99), "n": len(ordered)}


async def start_gateway(peer: str, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        *(
            sys.executable,
            "-m",
            "atomic_p2p.cli.main",
            "gateway",
            "--bootstrap",
            peer,
            "--port",
            "0",
            "--no-store",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=log.open("wb"),
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 120.0)).decode().strip()
    listening = LISTENING.match(line)
    if listening is None:
        raise RuntimeError(f"the gateway did not start: {line!r}\n{log.read_text()[-2000:]}")
    return process, listening.group(1)


async def measure(args: argparse.Namespace, workdir: Path, failures: list[str]) -> dict[str, list[Timed]]:
    samples: dict[str, list[Timed]] = {"sdk": [], "gateway (httpx)": [], "gateway (openai)": []}
    async with peer_processes([peer_table(args.tokens, args.step_ms)], workdir) as (peer,):
        gateway, url = await start_gateway(peer.address, workdir / "gateway.log")
        try:
            async with (
                Requester(bootstrap=[peer.address], gossip=GOSSIP) as requester,
                httpx.AsyncClient(base_url=url, timeout=60.0) as http,
                openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as client,
            ):
                if not await requester.wait_for_peers(CAPABILITY, 1, timeout=30.0):
                    raise RuntimeError("the SDK's requester never saw the peer")
                ways: dict[str, Callable[[], Awaitable[Timed]]] = {
                    "sdk": lambda: via_sdk(requester, args.tokens),
                    "gateway (httpx)": lambda: via_httpx(http, args.tokens),
                    "gateway (openai)": lambda: via_openai(client, args.tokens),
                }
                names = list(ways)
                round_number = 0
                while len(samples["sdk"]) < args.rounds:
                    order = names[round_number % 3 :] + names[: round_number % 3]
                    try:
                        results = {name: await ways[name]() for name in order}
                    except (AtomicError, openai.APIError, httpx.HTTPError, PurchaseFailed) as error:
                        # A stall on a loaded machine (a peer's token later than the call timeout)
                        # fails one purchase: the round is dropped and counted, not the benchmark.
                        failures.append(f"round {round_number}: {str(error).splitlines()[0][:200]}")
                        if len(failures) > max(3, args.rounds // 5):
                            raise RuntimeError(f"too many failed rounds: {failures}") from error
                        round_number += 1
                        continue
                    texts = {result[2] for result in results.values()}
                    if len(texts) != 1:
                        raise RuntimeError(f"the answers differ: {sorted(texts)}")
                    if round_number >= args.warmup:
                        for name, result in results.items():
                            samples[name].append(result)
                    round_number += 1
        finally:
            gateway.send_signal(signal.SIGTERM)
            await asyncio.wait_for(gateway.wait(), 30.0)
    return samples


def report(samples: dict[str, list[Timed]], args: argparse.Namespace) -> dict[str, Any]:
    rows = {
        name: {
            "ttft_ms": percentiles([s[0] for s in timed]),
            "total_ms": percentiles([s[1] for s in timed]),
        }
        for name, timed in samples.items()
    }
    sdk = rows["sdk"]
    ratios = {
        name: {
            f"{metric}_{q}": row[metric][q] / sdk[metric][q]
            for metric in ("ttft_ms", "total_ms")
            for q in ("p50", "p99")
        }
        for name, row in rows.items()
        if name != "sdk"
    }
    # The same ratios per round (each gateway purchase over the SDK purchase of its round), whose
    # median shrugs off the load other processes put on the machine between rounds.
    paired = {
        name: {
            f"{metric}_p50": statistics.median(
                mine[column] / base[column] for mine, base in zip(timed, samples["sdk"], strict=True)
            )
            for column, metric in ((0, "ttft_ms"), (1, "total_ms"))
        }
        for name, timed in samples.items()
        if name != "sdk"
    }
    print(
        f"\ngateway benchmark: {args.rounds} rounds of {args.tokens} tokens (after {args.warmup} warm-up), "
        f"one atomic-peer process ({args.step_ms:g} ms per token), atomic gateway in its own process"
    )
    print(f"  {'way':<18}{'ttft p50':>10}{'ttft p99':>10}{'total p50':>11}{'total p99':>11}   ms")
    for name, row in rows.items():
        ttft, total = row["ttft_ms"], row["total_ms"]
        print(
            f"  {name:<18}{ttft['p50']:>10.2f}{ttft['p99']:>10.2f}{total['p50']:>11.2f}{total['p99']:>11.2f}"
        )
    print(f"\n  {'gateway / sdk':<18}{'ttft p50':>10}{'ttft p99':>10}{'total p50':>11}{'total p99':>11}")
    for name, ratio in ratios.items():
        print(
            f"  {name:<18}{ratio['ttft_ms_p50']:>9.2f}x{ratio['ttft_ms_p99']:>9.2f}x"
            f"{ratio['total_ms_p50']:>10.2f}x{ratio['total_ms_p99']:>10.2f}x"
        )
    print(f"\n  {'paired, per round':<18}{'ttft p50':>10}{'':>10}{'total p50':>11}")
    for name, ratio in paired.items():
        print(f"  {name:<18}{ratio['ttft_ms_p50']:>9.2f}x{'':>10}{ratio['total_ms_p50']:>10.2f}x")
    main_ratio = ratios["gateway (httpx)"]
    targets = {
        "ttft_p50": [TARGET_RATIO, main_ratio["ttft_ms_p50"] <= TARGET_RATIO],
        "total_p50": [TARGET_RATIO, main_ratio["total_ms_p50"] <= TARGET_RATIO],
    }
    for name, (target, ok) in targets.items():
        print(f"  target gateway (httpx) {name} <= {target}x the sdk: {'met' if ok else 'NOT met'}")
    return {
        "rounds": args.rounds,
        "warmup": args.warmup,
        "tokens": args.tokens,
        "step_ms": args.step_ms,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": rows,
        "ratios": ratios,
        "paired_ratios": paired,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=40, help="purchases each way (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="rounds not counted (default 3)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per generation (default 100)")
    parser.add_argument("--step-ms", type=float, default=0.0, help="the peer's time per token (default 0)")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench_gateway.json")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or not 1 <= args.tokens <= 1000 or args.step_ms < 0:
        parser.error("need --rounds >= 1, --warmup >= 0, 1 <= --tokens <= 1000, --step-ms >= 0")
    with tempfile.TemporaryDirectory(prefix="atomic-bench-gateway-") as tmp:
        failures: list[str] = []
        samples = asyncio.run(measure(args, Path(tmp), failures))
    document = report(samples, args)
    document["failed_rounds"] = failures
    if failures:
        print(f"  {len(failures)} round(s) dropped: {failures}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
