#!/usr/bin/env python3
"""Benchmark: gossip convergence of real peers over real gRPC (docs/architecture.md section 11:
100 peers <= 4 s at a 0.5 s interval).

    python scripts/bench_gossip_grpc.py                       # 4 processes x 25 peers, both modes, 3 trials
    python scripts/bench_gossip_grpc.py --mode join --trials 5 --json out/bench_gossip_grpc.json

Every peer has its own Ed25519 key, its own gRPC server on 127.0.0.1 and its own gossip agent
(the real transport, codec and signed records); several run in one process (``--procs`` x
``--per-proc``). ``--nodes light`` (default): gossip-only servers advertising a tiny model, the
peers of one process sharing one verification cache (as the simulator's nodes do: it changes the
CPU spent, never an outcome). ``--nodes full``: :class:`~atomic_p2p.peer.node.PeerNode` s hosting
the small example model (an MLP 64-16-10), each verifying on its own.

Two ways to start them, each trial with fresh processes and keys:

- **join** (what the issue names): peers start one after another, all processes at once, each
  with ``bootstrap`` = the first peer. Measured: from the *last* start until every peer's
  directory lists all the others.
- **cold**: every peer first serves alone (gossip running, nobody known). Then, at one instant,
  each is handed only the first peer's signed record (``Membership.absorb``) and must learn the
  other N - 2 by gossip. Measured: from that instant until every directory lists all the others.
  This is the harder case: the whole table moves, not just the last joiner's record.

Reported per mode: the time for the last peer to complete (max over peers, the number the target
is about), the median peer, the same in rounds (time / interval), when every peer held every
record whatever its state ("all known": a member some peer suspects for a moment is held but
not listed, so this is dissemination alone), exchanges, suspicions,
rejections, the CPU seconds the peer processes burned while converging, and the CPU one peer-round
costs once converged (100 peers at 0.5 s need 200 peer-rounds per second from two cores: more than
10 ms each cannot keep up). Everything shares the machine's cores with the measuring processes and
with whatever else runs there: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the example peers: peers.examples
CONVERGE_TIMEOUT_S = 60.0
STEADY_WINDOW_S = 3.0


# --------------------------------------------------------------------------- worker (child)


def emit(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def read_message() -> dict[str, Any]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("parent went away")
    message: dict[str, Any] = json.loads(line)
    return message


class LightNode:
    """A lightweight peer: a gRPC server on 127.0.0.1 serving only ``atomic.v1.Peer/Gossip``, and
    its :class:`GossipAgent`, advertising one tiny model it does not load. The gossip path is the
    one a :class:`PeerNode` runs (the same agent, codec, keys and signatures)."""

    def __init__(self, server: Any, gossip: Any, address: str) -> None:
        self.server, self.gossip, self.address = server, gossip, address

    @classmethod
    async def start(cls, config: Any, seeds: tuple[str, ...], opener: Any) -> LightNode:
        import grpc

        from atomic_p2p.errors import AtomicError
        from atomic_p2p.gossip import ModelAdvert
        from atomic_p2p.gossip.transport import GossipAgent
        from atomic_p2p.identity import Identity
        from atomic_p2p.tls import TlsCredentials

        identity = Identity.generate()
        credentials = TlsCredentials.generate(identity)  # TLS as every node serves it
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        address = f"127.0.0.1:{server.add_secure_port('127.0.0.1:0', credentials.server_credentials())}"
        tiny = ModelAdvert("digits-tiny", ("classify/digits",), price_hint=0.001, typical_latency_ms=0.05)
        agent = GossipAgent(
            identity,
            config,
            addresses=[address],
            models=[tiny],
            seeds=seeds,
            opener=opener,
            tls_certificate=credentials.certificate_der,
        )

        async def gossip(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return agent.handle(raw, context.peer())
            except AtomicError as error:  # rate limited, or malformed: the status a peer sends
                await context.abort(error.code, str(error))
                raise

        handler = grpc.method_handlers_generic_handler(
            "atomic.v1.Peer", {"Gossip": grpc.unary_unary_rpc_method_handler(gossip)}
        )
        server.add_generic_rpc_handlers((handler,))
        await server.start()
        await agent.start()
        return cls(server, agent, address)

    async def stop(self, grace: float) -> None:
        await self.gossip.stop(leave=True)
        await self.server.stop(grace)


async def worker(
    index: int, count: int, total: int, interval: float, fanout: int, mode: str, kind: str, data: Path
) -> None:
    from atomic_p2p._proto.atomic.v1 import envelope_pb2
    from atomic_p2p.gossip import GossipConfig
    from atomic_p2p.gossip.codec import Opener
    from atomic_p2p.peer.node import PeerNode
    from atomic_p2p.protocol.wire import envelope_from_proto, envelope_to_proto
    from peers.examples import example_config

    gossip_config = GossipConfig(interval=interval, fanout=fanout)
    shared_opener = Opener(gossip_config.limits.record, max_entries=64 * total)

    async def start(position: int, bootstrap: tuple[str, ...]) -> Any:
        if kind == "light":
            return await LightNode.start(gossip_config, bootstrap, shared_opener)
        config = example_config(
            "small",
            data,
            data_dir=data / f"w{index}-n{position}",
            gossip_interval_s=interval,
            gossip_fanout=fanout,
            bootstrap=bootstrap,
        )
        return await PeerNode.start(config)

    nodes: list[Any] = []
    started: list[float] = []
    seed: tuple[str, ...] = ()
    if index == 0:  # the first peer of all: everyone's bootstrap
        nodes.append(await start(0, ()))
        started.append(time.time())
        assert nodes[0].gossip is not None
        envelope = envelope_to_proto(nodes[0].gossip.membership.snapshot()[0]).SerializeToString()
        emit({"seed": nodes[0].address, "record": envelope.hex()})
        seed = (nodes[0].address,)
    else:
        seed = (str((await read_message())["seed"]),)
    for position in range(len(nodes), count):
        nodes.append(await start(position, seed if mode == "join" else ()))
        started.append(time.time())
    emit({"started": started})

    origin = max(started)
    if mode == "cold":
        go = await read_message()
        record = envelope_from_proto(envelope_pb2.SignedEnvelope.FromString(bytes.fromhex(go["record"])))
        await asyncio.sleep(max(0.0, go["at"] - time.time()))
        origin = time.time()
        for node in nodes:
            assert node.gossip is not None
            if node.address != go["seed"]:
                node.gossip.membership.absorb(origin, [record])
    cpu_before = time.process_time()
    complete: list[float | None] = [None] * len(nodes)
    known: list[float | None] = [None] * len(nodes)  # holds every record, whatever the state
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    next_report = time.monotonic() + 1.0
    while None in complete and time.monotonic() < deadline:
        now = time.time()
        for position, node in enumerate(nodes):
            if complete[position] is None and len(node.gossip.directory) >= total - 1:
                complete[position] = now
            if known[position] is None and len(node.gossip.membership.digest()) >= total:
                known[position] = now
        before = time.monotonic()
        await asyncio.sleep(0.01)
        lag = time.monotonic() - before - 0.01
        if os.environ.get("BENCH_VERBOSE") and time.monotonic() > next_report:
            next_report = time.monotonic() + 1.0
            sizes = sorted(len(n.gossip.directory) for n in nodes if n.gossip)
            states = Counter[str]()
            for n in nodes:
                assert n.gossip is not None
                states.update({state.value: c for state, c in n.gossip.membership.counts().items()})
            print(
                f"worker {index} t+{now - origin:.1f}s dir min/med {sizes[0]}/{sizes[len(sizes) // 2]} "
                f"states {dict(states)} lag {lag * 1000:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
    cpu = time.process_time() - cpu_before
    # What the peers burn once the tables agree: CPU per peer-round and cores. Both count only the
    # CPU the process got; on a starved machine the demand is higher (rounds run late).
    steady_before, wall_before = time.process_time(), time.monotonic()
    exchanges_before = sum(node.gossip.exchanges_completed for node in nodes)
    await asyncio.sleep(STEADY_WINDOW_S)
    window = time.monotonic() - wall_before
    steady_cpu = time.process_time() - steady_before
    steady_ms = steady_cpu / (len(nodes) * window / interval) * 1000
    steady_exchanges = sum(node.gossip.exchanges_completed for node in nodes) - exchanges_before
    rejected: Counter[str] = Counter()
    stats = Counter[str]()
    for node in nodes:
        assert node.gossip is not None
        membership = node.gossip.membership
        rejected.update({reason.value: n for reason, n in membership.stats.rejected.items()})
        stats.update(
            {
                "exchanges": node.gossip.exchanges_completed,
                "suspicions": membership.stats.suspicions,
                "deaths": membership.stats.deaths,
            }
        )
    emit(
        {
            "complete": complete,
            "known": known,
            "origin": origin,
            "cpu_s": cpu,
            "steady_ms_per_peer_round": steady_ms,
            "steady_cores": steady_cpu / window,
            "steady_ms_per_exchange": steady_cpu / max(1, steady_exchanges) * 1000,
            "rejected": rejected,
            "stats": stats,
        }
    )
    await read_message()  # "stop"
    await asyncio.gather(*(node.stop(grace=0.2) for node in nodes))


# --------------------------------------------------------------------------- parent


def run_trial(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    total = args.procs * args.per_proc
    with tempfile.TemporaryDirectory(prefix="bench-gossip-") as tmp:
        command = [sys.executable, __file__, "--worker"]
        options = ["--per-proc", str(args.per_proc), "--interval", str(args.interval)]
        options += ["--fanout", str(args.fanout), "--total", str(total), "--data", tmp, "--mode", mode]
        options += ["--nodes", args.nodes]
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
        workers = [
            subprocess.Popen(
                [*command, str(index), *options],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
            for index in range(args.procs)
        ]
        try:
            return _drive(workers, mode, args.interval)
        finally:
            for process in workers:
                if process.poll() is None:
                    try:
                        process.communicate(json.dumps({"stop": True}) + "\n", timeout=30)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()


def _drive(workers: list[subprocess.Popen[str]], mode: str, interval: float) -> dict[str, Any]:
    def send(process: subprocess.Popen[str], message: dict[str, Any]) -> None:
        assert process.stdin is not None
        process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()

    def receive(process: subprocess.Popen[str]) -> dict[str, Any]:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker exited with {process.wait()}")
        message: dict[str, Any] = json.loads(line)
        return message

    seed = receive(workers[0])
    for process in workers[1:]:
        send(process, {"seed": seed["seed"]})
    started = [t for process in workers for t in receive(process)["started"]]
    if mode == "cold":
        go = {"at": time.time() + 0.5, "record": seed["record"], "seed": seed["seed"]}
        for process in workers:
            send(process, go)
    reports = [receive(process) for process in workers]
    origin = max(started) if mode == "join" else reports[0]["origin"]
    complete = [t for report in reports for t in report["complete"]]
    done = [t - origin for t in complete if t is not None]
    known = [t - origin for report in reports for t in report["known"] if t is not None]
    rejected: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    for report in reports:
        rejected.update(report["rejected"])
        stats.update(report["stats"])
    return {
        "mode": mode,
        "peers": len(complete),
        "converged": len(done) == len(complete),
        "last_s": max(done) if len(done) == len(complete) else None,
        "median_s": statistics.median(done) if done else None,
        "last_rounds": max(done) / interval if len(done) == len(complete) else None,
        # every record held (some members possibly SUSPECT, so not listed): dissemination alone
        "all_known_s": max(known) if len(known) == len(complete) else None,
        "start_span_s": max(started) - min(started),
        "cpu_s": sum(report["cpu_s"] for report in reports),
        "steady_ms_per_peer_round": statistics.mean(r["steady_ms_per_peer_round"] for r in reports),
        "steady_cores": sum(r["steady_cores"] for r in reports),
        "steady_ms_per_exchange": statistics.mean(r["steady_ms_per_exchange"] for r in reports),
        "exchanges": stats["exchanges"],
        "suspicions": stats["suspicions"],
        "deaths": stats["deaths"],
        "rejected": dict(rejected),
    }


def summarize(trials: list[dict[str, Any]], interval: float, target: float) -> dict[str, Any]:
    lasts = [t["last_s"] for t in trials if t["last_s"] is not None]
    return {
        "trials": len(trials),
        "converged": sum(t["converged"] for t in trials),
        "last_s_median": statistics.median(lasts) if lasts else None,
        "last_s_max": max(lasts) if lasts else None,
        "last_rounds_max": max(lasts) / interval if lasts else None,
        "median_peer_s": _median(t["median_s"] for t in trials),
        "all_known_s_max": max(
            (t["all_known_s"] for t in trials if t["all_known_s"] is not None), default=None
        ),
        "within_target": sum(1 for t in trials if t["last_s"] is not None and t["last_s"] <= target),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--procs", type=int, default=4, help="peer processes (default 4)")
    parser.add_argument("--per-proc", type=int, default=25, help="peers per process (default 25)")
    parser.add_argument("--interval", type=float, default=0.5, help="gossip interval, s (default 0.5)")
    parser.add_argument("--fanout", type=int, default=3, help="gossip fanout (default 3)")
    parser.add_argument("--mode", choices=["join", "cold", "both"], default="both")
    parser.add_argument(
        "--nodes",
        choices=["light", "full"],
        default="light",
        help="light: gossip-only servers sharing one verification cache per process (default); "
        "full: PeerNodes hosting the small example model, each verifying on its own",
    )
    parser.add_argument("--trials", type=int, default=3, help="trials per mode (default 3)")
    parser.add_argument("--target", type=float, default=4.0, help="the target in seconds (default 4)")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "bench_gossip_grpc.json")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        asyncio.run(
            worker(
                args.worker,
                args.per_proc,
                args.total,
                args.interval,
                args.fanout,
                args.mode,
                args.nodes,
                args.data,
            )
        )
        return 0

    modes = ["join", "cold"] if args.mode == "both" else [args.mode]
    peers = args.procs * args.per_proc
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for mode in modes:
        trials = []
        for trial in range(args.trials):
            result = run_trial(args, mode)
            trials.append(result)
            last = "did not converge" if result["last_s"] is None else f"{result['last_s']:.2f} s"
            print(
                f"{mode} trial {trial + 1}/{args.trials}: {peers} peers, last complete {last}, "
                f"median {_fmt(result['median_s'])} s, started over {result['start_span_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        results[mode] = {"summary": summarize(trials, args.interval, args.target), "trials": trials}

    print(
        f"\ngossip convergence over real gRPC: {peers} {args.nodes} peers ({args.procs} x {args.per_proc}), "
        f"interval {args.interval:g} s, fanout {args.fanout}; target <= {args.target:g} s"
    )
    print(
        f"  {'mode':<6}{'trials':>7}{'ok':>4}{'last p50 s':>12}{'last max s':>12}{'rounds max':>12}"
        f"{'median peer s':>15}{'within target':>15}{'all known max s':>17}"
    )
    for mode, result in results.items():
        s = result["summary"]
        print(
            f"  {mode:<6}{s['trials']:>7}{s['converged']:>4}{_fmt(s['last_s_median']):>12}{_fmt(s['last_s_max']):>12}"
            f"{_fmt(s['last_rounds_max'], 1):>12}{_fmt(s['median_peer_s']):>15}"
            f"{s['within_target']:>13}/{s['trials']}{_fmt(s['all_known_s_max']):>17}"
        )
    document = {
        "benchmark": "gossip convergence over real gRPC",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "peers": peers,
        "procs": args.procs,
        "per_proc": args.per_proc,
        "interval_s": args.interval,
        "fanout": args.fanout,
        "nodes": args.nodes,
        "target_s": args.target,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {args.json}")
    return 0


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
