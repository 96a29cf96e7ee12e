#!/usr/bin/env python3
"""A local atomic-p2p testnet with a demo workload (what ``make demo`` runs).

    python scripts/testnet.py                        # 6 peers: digits, text and a language model
    python scripts/testnet.py --peers 20 --quiet     # 20 peers, summary only
    sudo python scripts/testnet.py --hosts           # each peer in its own network namespace
    python scripts/testnet.py --fault-delay-ms 20 --fault-jitter-ms 10 --fault-loss 0.05

Starts N ``atomic-peer`` processes cycling through example configs (``--configs``; they differ in
model, strategy and price). The first starts alone; every later one joins the gossip through
``--bootstrap`` of a random peer already serving, a few starting at once. A requester that knows
only the first peer's address then joins as a member hosting nothing, a progress bar follows its
directory until all N peers are in it, and the demo workload runs through it: held-out digits,
the three weights profiles in turn, every auction printed (bids, winner, price, result). Where
text peers run, a few held-out docstring sentences are then sold as text (each peer tokenises them
with its own tokenizer; the predicted package is printed beside the true one), and where the
language model runs, one generation streams token by token. A summary per peer ends the run (bids,
wins, mean latency, revenue, accuracy).

Every connection is TLS, each certificate bound to its peer's key (docs/security.md): every
``--bootstrap`` and the requester's seed name the peer id they expect (``PEERID@host:port``, read
from the peer's key file), so even first contact is checked. ``--insecure`` runs it all plaintext,
for debugging.

``--hosts`` puts every peer in its own network namespace with its own address on a veth bridge
(:mod:`atomic_p2p.netns`; needs root), so gossip and auctions cross a real virtual network; the
requester stays in the root namespace and reaches them over the bridge. ``--fault-*`` flags inject
delay, jitter and loss into every peer's outgoing calls and the requester's (:mod:`atomic_p2p.faults`).

Every process it started is stopped on exit, on error, on Ctrl-C and on SIGTERM (SIGTERM to each
peer's process group, which drains it, then SIGKILL after a grace period), and in ``--hosts``
mode every namespace and link is removed. Peer logs go to ``<data-dir>/<peer>/peer.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "peers"))

from atomic_p2p.cli import observability  # noqa: E402
from atomic_p2p.cli.report import render_text  # noqa: E402
from atomic_p2p.errors import AtomicError  # noqa: E402
from atomic_p2p.faults import ENV_VAR as FAULTS_ENV  # noqa: E402
from atomic_p2p.faults import FaultPlan  # noqa: E402
from atomic_p2p.gossip import GossipConfig  # noqa: E402
from atomic_p2p.identity import Identity  # noqa: E402
from atomic_p2p.netns import Host, VirtualNetwork  # noqa: E402
from atomic_p2p.progress import progress as progress_bar  # noqa: E402
from atomic_p2p.requester import Requester, Result  # noqa: E402

DEFAULT_CONFIGS = ("small", "large", "specialist", "text-small", "text-large", "lm-small")
WEIGHTS = ("balanced", "accuracy", "speed")  # the SDK weights profiles the demo cycles through
CAPABILITY = "classify/digits"
TEXT_CAPABILITY = "classify/docstrings"
TEXT_MODELS = {"docstrings-char", "docstrings-word"}
TEXT_REQUESTS = 3
TEXT_BATCH = 4
GENERATE_CAPABILITY = "generate/docstrings"
LM_MODELS = {"docstrings-lm"}
GENERATION_PROMPT = "Return the "
START_TIMEOUT_S = 180.0  # a cold first start trains the models
STARTING_AT_ONCE = 4  # peer processes importing torch at once; more only thrash two cores
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Options:
    peers: int = len(DEFAULT_CONFIGS)
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    data_dir: Path = ROOT / ".data" / "testnet"
    cache_dir: Path | None = None  # trained weights; default data_dir / "weights"
    gossip_interval: float = 0.5
    faults: FaultPlan = field(default_factory=FaultPlan)
    hosts: bool = False
    seed: int = 0
    metrics: bool = False  # each peer serves /metrics on a free port (its second stdout line)
    log_format: str = "text"
    store: Path | None = None  # the requester's SQLite store (what `atomic top` and `atomic bids` read)
    insecure: bool = False


@dataclass
class PeerProcess:
    name: str
    process: subprocess.Popen[str]
    log: Path
    host: Host | None = None
    address: str = ""
    peer_id: str = ""
    full_id: str = ""  # hex, from the peer's key file
    models: list[str] = field(default_factory=list)
    metrics_url: str = ""

    @property
    def dial_address(self) -> str:
        """``PEERID@host:port``: where to reach this peer, and who must answer there."""
        return f"{self.full_id}@{self.address}"


@dataclass
class Testnet:
    peers: list[PeerProcess]
    network: VirtualNetwork | None

    @property
    def seed_address(self) -> str:
        return self.peers[0].dial_address


# --- starting and stopping peers ----------------------------------------------------------------


def peer_command(
    options: Options, index: int, name: str, bootstrap: str | None, host: Host | None
) -> list[str]:
    config = options.configs[index % len(options.configs)]
    command = [
        sys.executable,
        "-m",
        "atomic_p2p.cli.peer",
        str(ROOT / "peers" / f"{config}.toml"),
        "--host",
        host.address if host else "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(options.data_dir / name),
        "--cache-dir",
        str(options.cache_dir or options.data_dir / "weights"),  # shared: each recipe trains once
        "--gossip-interval",
        f"{options.gossip_interval:g}",
        "--drain-timeout",
        "5",
        "--log-level",
        "WARNING",
        "--log-format",
        options.log_format,
    ]
    if options.metrics:
        command += ["--metrics-port", "0", "--metrics-host", host.address if host else "127.0.0.1"]
    if bootstrap:
        command += ["--bootstrap", bootstrap]
    if options.insecure:
        command.append("--insecure")
    plan = options.faults
    if plan.active:
        command += [
            "--fault-delay-ms",
            f"{plan.delay_ms:g}",
            "--fault-jitter-ms",
            f"{plan.jitter_ms:g}",
            "--fault-loss",
            f"{plan.loss:g}",
        ]
        if plan.seed is not None:
            command += ["--fault-seed", str(plan.seed + 1 + index)]
    return host.exec_args(command) if host else command


def launch(options: Options, index: int, bootstrap: str | None, host: Host | None) -> PeerProcess:
    name = f"{index:02d}-{options.configs[index % len(options.configs)]}"
    log_path = options.data_dir / name / "peer.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            peer_command(options, index, name, bootstrap, host),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            # Own process group: Ctrl-C in the terminal reaches only us, and we stop the peers.
            start_new_session=True,
        )
    return PeerProcess(name, process, log_path, host)


def parse_listening(peer: PeerProcess, line: str) -> None:
    """``atomic-peer <id> listening on <addr> hosting <m1>, <m2>`` (the peer's one stdout line)."""
    words = line.split()
    if "listening" not in words:
        raise RuntimeError(f"peer {peer.name} printed {line!r} instead of its listening line")
    peer.peer_id, peer.address = words[1], words[words.index("on") + 1]
    peer.full_id = Identity.load(peer.log.parent / "key.pem").peer_id.hex
    peer.models = [m.strip(",") for m in words[words.index("hosting") + 1 :]]


def start_peers(options: Options, network: VirtualNetwork | None, peers: list[PeerProcess]) -> None:
    """Start ``options.peers`` peers into ``peers`` (so a caller can stop them on any failure)."""
    rng = random.Random(options.seed)
    hosts = network.hosts if network else [None] * options.peers
    selector = selectors.DefaultSelector()
    listening: list[PeerProcess] = []
    next_index = 0
    deadline = time.monotonic() + START_TIMEOUT_S
    with progress_bar(total=options.peers, desc="starting peers", unit="peer") as bar:
        while len(listening) < options.peers:
            # the first peer starts alone; then a few at once, each joining through a serving one
            starting = len(peers) - len(listening)
            room = (STARTING_AT_ONCE if listening else 1) - starting
            while room > 0 and next_index < options.peers:
                seed = rng.choice(listening).dial_address if listening else None
                peer = launch(options, next_index, seed, hosts[next_index])
                peers.append(peer)
                assert peer.process.stdout is not None
                selector.register(peer.process.stdout, selectors.EVENT_READ, peer)
                next_index += 1
                room -= 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{options.peers - len(listening)} peers did not start within {START_TIMEOUT_S:.0f} s"
                )
            for key, _ in selector.select(timeout=min(left, 1.0)):
                peer = key.data
                line = peer.process.stdout.readline()
                selector.unregister(key.fileobj)
                if not line:
                    tail = peer.log.read_text()[-2000:]
                    raise RuntimeError(
                        f"peer {peer.name} exited with {peer.process.wait()} before serving:\n{tail}"
                    )
                parse_listening(peer, line)
                if options.metrics:  # printed right after the listening line
                    peer.metrics_url = peer.process.stdout.readline().split()[-1]
                listening.append(peer)
                bar.update()
    selector.close()


def stop_all(peers: list[PeerProcess], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM each peer's process group (the peer drains, leaves and exits 0), then SIGKILL."""
    for peer in peers:
        if peer.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(peer.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for peer in peers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            peer.process.wait(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(peer.process.pid, signal.SIGKILL)  # the group: anything the peer spawned too
        peer.process.wait()
        if peer.process.stdout is not None:
            peer.process.stdout.close()


@contextlib.contextmanager
def testnet(options: Options) -> Iterator[Testnet]:
    """Start the peers (in namespaces with ``options.hosts``); stop them and remove the network on
    exit, whatever happens. A second Ctrl-C during the cleanup is ignored, not obeyed half-way."""
    network = VirtualNetwork(options.peers) if options.hosts else None
    peers: list[PeerProcess] = []
    try:
        if network is not None:
            network.create()
        start_peers(options, network, peers)
        yield Testnet(peers, network)
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stop_all(peers)
            if network is not None:
                network.destroy()
        finally:
            signal.signal(signal.SIGINT, previous)


# --- the requester's side -----------------------------------------------------------------------


async def wait_converged(requester: Requester, peers: int, timeout: float) -> float:
    """Show a progress bar until the requester's directory lists ``peers`` live peers; seconds taken."""
    await requester.start()
    agent = requester.discovery.agent
    assert agent is not None
    started = time.monotonic()
    with progress_bar(total=peers, desc="gossip converging", unit="peer") as bar:

        def progress() -> bool:
            bar.update(min(peers, len(agent.directory)) - bar.n)
            return len(agent.directory) >= peers

        if not await agent.wait_until(progress, timeout):
            raise RuntimeError(
                f"the requester's directory lists {len(agent.directory)} of {peers} peers after {timeout:g} s"
            )
    return time.monotonic() - started


def held_out_digits() -> tuple[torch.Tensor, torch.Tensor]:
    import digits  # peers/digits.py: the split every example model was evaluated on

    _, _, x, y = digits.dataset()
    return x, y


@dataclass
class Tally:
    bids: int = 0
    wins: int = 0
    latency_ms: list[float] = field(default_factory=list)
    revenue: float = 0.0
    correct: int = 0
    examples: int = 0


def record(
    tallies: dict[str, Tally], names: dict[str, str], result: Result, correct: int, examples: int
) -> None:
    """Count an auction's bids, and the winner's win, latency, revenue and correct answers."""
    for scored in result.bids:
        tallies[names.get(scored.item.peer_id.short, scored.item.peer_id.short)].bids += 1
    winner = tallies[names.get(result.winner.peer_id.short, result.winner.peer_id.short)]
    winner.wins += 1
    winner.latency_ms.append(result.attempts[-1].elapsed_ms)
    winner.revenue += result.price
    winner.correct += correct
    winner.examples += examples


async def digit_auctions(
    requester: Requester,
    names: dict[str, str],
    tallies: dict[str, Tally],
    requests: int,
    batch: int,
    quiet: bool,
) -> int:
    """The digit workload: held-out digits, the weights profiles in turn; returns the failures."""
    x, y = held_out_digits()
    failures = 0
    for index in progress_bar(range(requests), desc="demo requests", unit="req", enabled=quiet):
        start = (index * batch) % (len(x) - batch)
        weights = WEIGHTS[index % len(WEIGHTS)]
        try:
            result = await requester.run(
                CAPABILITY, {"x": x[start : start + batch]}, deadline_s=3.0, weights=weights
            )
        except AtomicError as exc:
            failures += 1
            print(f"request {index}: {exc}", file=sys.stderr)
            continue
        predicted = result.outputs["logits"].argmax(dim=1)
        record(tallies, names, result, int((predicted == y[start : start + batch]).sum()), batch)
        if not quiet:
            print(f"\n=== request {index + 1}/{requests} ({weights}) ===")
            print(render_text(result, weights))
    return failures


async def text_auctions(
    requester: Requester,
    names: dict[str, str],
    tallies: dict[str, Tally],
    requests: int,
    batch: int,
    quiet: bool,
) -> int:
    """Held-out docstring sentences sold as text: peers tokenise them with their own tokenizers."""
    import text  # peers/text.py: the split every text model was evaluated on

    _, _, sentences, labels = text.dataset()
    failures = 0
    for index in range(requests):
        start = index * batch
        chunk, truth = sentences[start : start + batch], labels[start : start + batch]
        weights = WEIGHTS[index % len(WEIGHTS)]
        try:
            result = await requester.run(
                TEXT_CAPABILITY, text=chunk, deadline_s=3.0, weights=weights, language="en"
            )
        except AtomicError as exc:
            failures += 1
            print(f"text request {index}: {exc}", file=sys.stderr)
            continue
        predicted = result.outputs["logits"].argmax(dim=1).tolist()
        record(tallies, names, result, sum(p == t for p, t in zip(predicted, truth, strict=True)), len(chunk))
        if not quiet:
            print(f"\n=== text request {index + 1}/{requests} ({weights}): which package documents it? ===")
            print(render_text(result, weights))
            print(f"  {'predicted':<10}{'truth':<10}sentence")
            for sentence, guess, answer in zip(chunk, predicted, truth, strict=True):
                print(f"  {text.PACKAGES[guess]:<10}{text.PACKAGES[answer]:<10}{sentence[:72]}")
    return failures


async def streamed_generation(
    requester: Requester, names: dict[str, str], tallies: dict[str, Tally], quiet: bool
) -> int:
    """One generation from a text prompt (each peer tokenises it with its own tokenizer), printed
    piece by piece as it arrives; returns the failures (0 or 1)."""
    if not quiet:
        print(f"\n=== streamed generation ({GENERATE_CAPABILITY}) ===")
        print(f"  {GENERATION_PROMPT}", end="", flush=True)
    try:
        generation = requester.generate(
            GENERATE_CAPABILITY, GENERATION_PROMPT, max_tokens=48, deadline_s=10.0
        )
        async for chunk in generation:
            if not quiet:
                print(chunk.text, end="", flush=True)
    except AtomicError as exc:
        print(f"\ngeneration: {exc}", file=sys.stderr)
        return 1
    result = generation.result
    # A generation's result names who produced tokens, not every bidder: only those bids are counted.
    for part in result.parts:
        tally = tallies[names.get(part.bid.peer_id.short, part.bid.peer_id.short)]
        tally.bids += 1
        tally.wins += 1
        tally.revenue += part.cost
        tally.latency_ms += [attempt.elapsed_ms for attempt in result.attempts if attempt.bid == part.bid]
    if not quiet:
        producers = ", ".join(f"{names.get(p.bid.peer_id.short, p.bid.peer_id.short)}" for p in result.parts)
        print(f"\n  {len(result.tokens)} tokens from {producers} for {result.price:.4f}")
    return 0


async def workload(
    requester: Requester, peers: list[PeerProcess], requests: int, batch: int, quiet: bool
) -> dict[str, Tally]:
    tallies: dict[str, Tally] = defaultdict(Tally)
    names = {peer.peer_id: peer.name for peer in peers}
    models = {model for peer in peers for model in peer.models}
    failures = await digit_auctions(requester, names, tallies, requests, batch, quiet)
    if models & TEXT_MODELS:
        failures += await text_auctions(requester, names, tallies, TEXT_REQUESTS, TEXT_BATCH, quiet)
    if models & LM_MODELS:
        failures += await streamed_generation(requester, names, tallies, quiet)
    if failures:
        print(f"{failures} requests failed", file=sys.stderr)
    return tallies


async def demo(
    net: Testnet, options: Options, requests: int, batch: int, quiet: bool, stay_s: float = 0.0
) -> dict[str, Tally]:
    """Join, converge, run the workload; with ``stay_s``, print the summary and keep the network
    (and the requester's gossip) up that long, for ``atomic top`` or a Prometheus server."""
    if options.faults.active:  # the requester's channel pool reads it (the peers got flags)
        plan = options.faults
        seed = f",seed={plan.seed}" if plan.seed is not None else ""
        os.environ[FAULTS_ENV] = (
            f"delay_ms={plan.delay_ms:g},jitter_ms={plan.jitter_ms:g},loss={plan.loss:g}{seed}"
        )
    gossip = GossipConfig(interval=options.gossip_interval)
    async with Requester(
        bootstrap=[net.seed_address], gossip=gossip, store=options.store, insecure=options.insecure
    ) as requester:
        took = await wait_converged(
            requester, len(net.peers), timeout=max(30.0, 40 * options.gossip_interval)
        )
        print(f"the requester's directory lists all {len(net.peers)} peers, {took:.1f} s after joining")
        tallies = await workload(requester, net.peers, requests, batch, quiet)
        if stay_s > 0:
            print_summary(net.peers, tallies)
            await stay(net, options, stay_s)
        return tallies


async def stay(net: Testnet, options: Options, stay_s: float) -> None:
    """Keep the network up for ``stay_s`` seconds (inf: until Ctrl-C or SIGTERM)."""
    store = f" --store {options.store}" if options.store else ""
    until = "until Ctrl-C" if math.isinf(stay_s) else f"for {stay_s:g} s"
    print(f"\nthe network stays up {until}; watch it with: atomic top --bootstrap {net.seed_address}{store}")
    sys.stdout.flush()
    deadline = time.monotonic() + stay_s
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 1.0))


def print_summary(peers: list[PeerProcess], tallies: dict[str, Tally]) -> None:
    print("\nSummary")
    print(
        f"  {'peer':<20}{'id':<10}{'address':<22}{'models':<24}"
        f"{'bids':>6}{'wins':>6}{'mean ms':>9}{'revenue':>10}{'accuracy':>10}"
    )
    for peer in peers:
        tally = tallies.get(peer.name, Tally())
        # "-" where there is nothing to average: a peer that never won has no latency or accuracy.
        mean = f"{sum(tally.latency_ms) / len(tally.latency_ms):.1f}" if tally.latency_ms else "-"
        accuracy = f"{tally.correct / tally.examples:.3f}" if tally.examples else "-"
        print(
            f"  {peer.name:<20}{peer.peer_id:<10}{peer.address:<22}{','.join(peer.models):<24}"
            f"{tally.bids:>6}{tally.wins:>6}{mean:>9}{tally.revenue:>10.4f}{accuracy:>10}"
        )


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--peers",
        type=int,
        default=len(DEFAULT_CONFIGS),
        help=f"peer processes to start (default {len(DEFAULT_CONFIGS)})",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(DEFAULT_CONFIGS),
        metavar="NAME",
        help=f"example configs (peers/NAME.toml) to cycle through (default {' '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument("--requests", type=int, default=12, help="digit requests to run (default 12)")
    parser.add_argument("--batch", type=int, default=8, help="digits per request (default 8)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".data" / "testnet",
        help="per-peer keys and logs, shared cached weights; kept so reruns skip training (default .data/testnet)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="trained weights, shareable between runs (default <data-dir>/weights)"
    )
    parser.add_argument("--gossip-interval", type=float, default=0.5, metavar="S", help="default 0.5")
    parser.add_argument("--hosts", action="store_true", help="one network namespace per peer (root only)")
    parser.add_argument("--fault-delay-ms", type=float, default=0.0, metavar="MS")
    parser.add_argument("--fault-jitter-ms", type=float, default=0.0, metavar="MS")
    parser.add_argument("--fault-loss", type=float, default=0.0, metavar="P")
    parser.add_argument("--fault-seed", type=int, default=None, metavar="N")
    parser.add_argument("--seed", type=int, default=0, help="who bootstraps from whom (default 0)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext everywhere (debugging; default: TLS bound to peer ids)",
    )
    parser.add_argument("--quiet", action="store_true", help="summary only, with a progress bar")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.add_argument(
        "--store",
        type=Path,
        help="the requester's SQLite store, for `atomic top` and `atomic bids` (default: none; with "
        "--stay, <data-dir>/requester.db)",
    )
    parser.add_argument(
        "--stay",
        type=float,
        default=0.0,
        metavar="S",
        help="after the workload keep the network up S seconds (inf: until Ctrl-C), e.g. for atomic top",
    )
    observability.add_arguments(parser)
    return parser


def options_from(args: argparse.Namespace) -> Options:
    if args.peers < 1:
        raise ValueError("--peers must be at least 1")
    missing = [name for name in args.configs if not (ROOT / "peers" / f"{name}.toml").exists()]
    if missing:
        raise ValueError(
            f"no peers/{missing[0]}.toml; pick from {sorted(p.stem for p in (ROOT / 'peers').glob('*.toml'))}"
        )
    return Options(
        peers=args.peers,
        configs=tuple(args.configs),
        data_dir=args.data_dir.resolve(),
        cache_dir=args.cache_dir.resolve() if args.cache_dir else None,
        gossip_interval=args.gossip_interval,
        faults=FaultPlan(args.fault_delay_ms, args.fault_jitter_ms, args.fault_loss, args.fault_seed),
        hosts=args.hosts,
        seed=args.seed,
        metrics=args.metrics_port is not None,
        log_format=args.log_format,
        store=_store(args),
        insecure=args.insecure,
    )


def _store(args: argparse.Namespace) -> Path | None:
    """The requester's store: --store, else with --stay one under the data dir (for atomic top),
    else none (a demo run learns nothing from the runs before it)."""
    if args.store is not None:
        return Path(args.store).resolve()
    return (args.data_dir / "requester.db").resolve() if args.stay else None


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: through testnet()'s cleanup


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from(args)
    except (ValueError, AtomicError) as exc:
        print(f"testnet: {exc}", file=sys.stderr)
        return 2
    if args.stay < 0:
        print("testnet: --stay takes seconds >= 0 (or inf)", file=sys.stderr)
        return 2
    observability.configure_logging(logging.WARNING, args.log_format)
    signal.signal(signal.SIGTERM, _terminate)
    metrics_server = None
    try:
        metrics_server = observability.start_metrics(args)
        if metrics_server is not None:
            print(f"requester metrics on {metrics_server.url}")
        with testnet(options) as net:
            for peer in net.peers:
                metrics = f" metrics {peer.metrics_url}" if peer.metrics_url else ""
                print(
                    f"peer {peer.name:<20} {peer.peer_id} at {peer.address} hosting "
                    f"{', '.join(peer.models)}{metrics}"
                )
            print(
                "transport: plaintext (--insecure)"
                if options.insecure
                else "transport: TLS on every connection, each certificate bound to its peer id; "
                "every bootstrap address names the peer id it expects"
            )
            sys.stdout.flush()
            tallies = asyncio.run(demo(net, options, args.requests, args.batch, args.quiet, args.stay))
            if not args.stay:
                print_summary(net.peers, tallies)
    except KeyboardInterrupt:
        print("\ninterrupted: peers stopped", file=sys.stderr)
        return 130
    except (RuntimeError, AtomicError) as exc:
        print(f"testnet: {exc}", file=sys.stderr)
        return 1
    finally:
        if metrics_server is not None:
            metrics_server.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {name: {**vars(t), "latency_ms": t.latency_ms} for name, t in tallies.items()}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
