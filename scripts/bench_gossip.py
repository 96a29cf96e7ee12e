#!/usr/bin/env python
"""Gossip benchmark, in the simulator: convergence, crash detection, bytes, false deaths under loss.

Every node is a real Membership with a real Ed25519 key, on a virtual clock (see
atomic_p2p/gossip/simulator.py). Defaults: GossipConfig() (fanout 3, push-pull with digest
summaries, 1 s interval) and a network delay uniform in 2-50 ms. Three kinds of trial per cluster
size, each a fresh simulation with its own seed, started converged and warmed up until liveness
traffic is steady (3 + slack(N) rounds: 5 at 100 nodes, 22 at 1000, 191 at 10,000):

- spread: ``--injections`` nodes each publish a new record (0.37 rounds apart); we count the rounds
  until the record reached every other live node (ceil of elapsed / interval);
- crash: the same, plus one random node crashes; we time its detection (first SUSPECT, first DEAD,
  DEAD at every live node);
- loss: ``--loss`` of all messages dropped, no crash, run past suspicion + dead timeouts; any DEAD
  is a false death (and records are injected here too, to time spread under loss).

Bytes per node per round are exact protobuf sizes of everything sent (requests, responses,
follow-ups), measured over two rounds of each trial after warm-up.

Targets (docs/architecture.md section 11): 100 nodes <= 5 rounds, 1000 nodes <= 6 and 10,000 <= 8
in 99% of trials; no false deaths at 10% loss; <= 30 KB sent per node per round from 1000 nodes.
``--full-digests`` runs the same trials with the whole digest in every exchange, as before digest
summaries (the baseline).

Past 1000 nodes the simulator does not fit this machine (10,000 nodes are 10^8 member slots,
about 60 GB of Python objects), so larger sizes run in the vectorised model of the same protocol
(atomic_p2p/gossip/model.py: numpy matrices, one row per node, the same keys, seeds, timeouts and
trial schedule, message sizes from the real codec). Whenever the model runs, it also runs beside
the simulator at 100 and 1000 nodes with the same seeds and trial counts, and a second table gives
model / simulator for each metric: that agreement is what the 10,000-node row rests on. The model
has no crash trials (it crashes nobody). ``--model`` runs it at the simulator's sizes too.

    python scripts/bench_gossip.py                      # 100 and 1000 nodes, a few minutes
    python scripts/bench_gossip.py --quick              # a smoke run, about a minute
    python scripts/bench_gossip.py --nodes 100 --trials 60 --json out/g.json
    python scripts/bench_gossip.py --nodes 100 1000 10000   # + the model at 10,000, ~20 minutes
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from atomic_p2p.gossip.config import GossipConfig
from atomic_p2p.gossip.messages import MembershipEvent, MemberState, RecordUpdated, StateChanged
from atomic_p2p.gossip.model import GossipModel
from atomic_p2p.gossip.simulator import START, Network, Simulator
from atomic_p2p.identity import PeerId
from atomic_p2p.progress import on_terminal, progress

WARMUP_ROUNDS = 3
BYTES_ROUNDS = 2
SPREAD_TARGETS = {100: 5, 1000: 6, 10_000: 8}
BYTES_TARGET = 30_000  # per node per round, from 1000 nodes
BYTES_TARGET_FROM = 1000
# Trials per size when --trials is not given: (spread, crash, loss). A 1000-node round costs about
# a second of CPU here (each node sweeps its 1000-member table every round, in Python), and a crash
# or loss trial at 1000 nodes runs about 50 rounds (the liveness budget stretches the timeouts), so
# 1000 nodes get one simulation of each kind, each publishing 20 records. --trials N scales both
# sizes up. 10,000 nodes hold 10^8 member slots (about 60 GB in Python): a machine that has that.
DEFAULT_TRIALS = {100: (40, 10, 6), 1000: (1, 1, 1), 10_000: (1, 0, 1)}
QUICK_TRIALS = {100: (10, 4, 2), 1000: (1, 0, 0)}


SIMULATOR_MAX = 1000
"""Largest size the simulator runs by default: past it, 10^8 member slots (10,000 nodes) need about
60 GB of Python objects, so larger sizes run in the vectorised model (atomic_p2p/gossip/model.py)."""
VALIDATION_SIZES = (100, 1000)
"""Where the model runs beside the simulator, to show how closely they agree."""


def default_injections(nodes: int) -> int:
    return 5 if nodes <= 300 else 20


class Trial:
    """One simulation and what it observed."""

    def __init__(
        self, kind: str, nodes: int, seed: int, loss: float, injections: int, summaries: bool = True
    ) -> None:
        self.kind, self.nodes, self.seed, self.loss = kind, nodes, seed, loss
        self.injections = injections
        self.config = GossipConfig(summaries=summaries)
        self.sim = Simulator(nodes, config=self.config, network=Network(loss=loss), seed=seed)
        self.rng = random.Random(f"bench/{seed}")
        self.published: dict[PeerId, tuple[int, float]] = {}
        self.reached: dict[PeerId, dict[int, float]] = {}
        self.victim: PeerId | None = None
        self.suspected: dict[int, float] = {}
        self.dead: dict[int, float] = {}
        self.false_deaths: list[tuple[int, str, float]] = []
        self.false_suspicions = 0
        self.sim.observer = self.observe

    def observe(self, index: int, now: float, event: MembershipEvent) -> None:
        if isinstance(event, RecordUpdated):
            published = self.published.get(event.peer_id)
            if published is not None and event.record.seq >= published[0]:
                self.reached[event.peer_id].setdefault(index, now)
        elif isinstance(event, StateChanged) and event.peer_id == self.victim:
            if event.state is MemberState.SUSPECT:
                self.suspected.setdefault(index, now)
            elif event.state is MemberState.DEAD:
                self.dead.setdefault(index, now)
        elif isinstance(event, StateChanged) and event.state is MemberState.DEAD:
            self.false_deaths.append((index, event.peer_id.short, now - START))
        elif isinstance(event, StateChanged) and event.state is MemberState.SUSPECT:
            self.false_suspicions += 1

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        sim, interval = self.sim, self.config.interval
        gc.freeze()  # a million long-lived objects: keep the cyclic collector off them
        sim.run_rounds(WARMUP_ROUNDS + self.config.slack(self.nodes))
        crashed_at = None
        if self.kind == "crash":
            victim = self.rng.randrange(self.nodes)
            sim.crash(victim)
            self.victim = sim.nodes[victim].identity.peer_id
            crashed_at = sim.now
        bytes_per_node_round = self.measure_bytes()
        origins = self.rng.sample([n.index for n in sim.live_nodes()], self.injections)
        for origin in origins:
            membership = sim.nodes[origin].membership
            record = membership.update_record(sim.now, models=membership.local_record.models[:0])
            self.published[membership.peer_id] = (record.seq, sim.now)
            self.reached[membership.peer_id] = {}
            sim.run_rounds(0.37)
        limit = sim.now + self.horizon()
        while sim.now < limit and not self.done():
            sim.run_rounds(1)
        gc.unfreeze()
        live = {n.index for n in sim.live_nodes()}
        spread_rounds = []
        unreached = 0
        for peer, (_, at) in self.published.items():
            got = {i: t for i, t in self.reached[peer].items() if i in live}
            if len(got) < len(live) - 1:
                unreached += 1
                continue
            spread_rounds.append(math.ceil((max(got.values()) - at) / interval - 1e-9))
        result: dict[str, Any] = {
            "kind": self.kind,
            "nodes": self.nodes,
            "seed": self.seed,
            "loss": self.loss,
            "spread_rounds": spread_rounds,
            "unreached": unreached,
            "bytes_per_node_round": bytes_per_node_round,
            "messages_per_node_round": sim.totals.messages
            / self.nodes
            / ((sim.now - 1_700_000_000) / interval),
            "false_deaths": len(self.false_deaths),
            "false_death_window_s": death_window([at for _, _, at in self.false_deaths]),
            "false_suspicions": self.false_suspicions,
            "node_rounds": self.nodes * (sim.now - 1_700_000_000) / interval,
            "wall_s": time.perf_counter() - started,
        }
        if crashed_at is not None:
            result["crash"] = self.detection(crashed_at, live)
        return result

    def measure_bytes(self) -> float:
        sim = self.sim
        before = sum(n.bytes_sent for n in sim.nodes)
        sim.measure_bytes = True
        sim.run_rounds(BYTES_ROUNDS)
        sim.measure_bytes = False
        return (sum(n.bytes_sent for n in sim.nodes) - before) / self.nodes / BYTES_ROUNDS

    def horizon(self) -> float:
        config, n = self.config, self.nodes
        if self.kind == "spread":
            return 10 * config.interval
        # a crashed member's last beat may reach a node up to slack rounds late, then it is timed
        return (config.slack(n) + 4) * config.interval + config.suspicion_timeout(n) + config.dead_timeout(n)

    def done(self) -> bool:
        if self.kind == "loss":
            return False  # runs its whole horizon: false deaths need time to happen
        live = len(self.sim.live_nodes())
        spread = all(len(r) >= live - 1 for r in self.reached.values())
        return spread and (self.victim is None or len(self.dead) >= live)

    def detection(self, crashed_at: float, live: set[int]) -> dict[str, Any]:
        interval = self.config.interval
        dead = [t - crashed_at for i, t in self.dead.items() if i in live]
        suspected = [t - crashed_at for i, t in self.suspected.items() if i in live]
        complete = len(dead) == len(live)
        return {
            "complete": complete,
            "first_suspect_s": min(suspected) if suspected else None,
            "first_dead_s": min(dead) if dead else None,
            "all_dead_s": max(dead) if complete else None,
            "all_dead_rounds": math.ceil(max(dead) / interval - 1e-9) if complete else None,
        }


def death_window(times: list[float]) -> tuple[float, float] | None:
    """Seconds since the start of the first and the last false death (None: there was none)."""
    return (min(times), max(times)) if times else None


def tick(bar: Any, rounds: int = 1) -> None:
    if bar is not None:
        bar.update(rounds)


class ModelTrial:
    """A spread or loss trial of :class:`GossipModel` (the vectorised model), run as :class:`Trial`
    runs the simulator: warm-up, two rounds of bytes, ``injections`` records 0.37 rounds apart,
    then until every record is everywhere (spread) or past the timeouts (loss)."""

    def __init__(self, kind: str, nodes: int, seed: int, loss: float, injections: int) -> None:
        if kind == "crash":
            raise ValueError("the model crashes nobody: crash trials run in the simulator only")
        self.kind, self.nodes, self.seed, self.loss = kind, nodes, seed, loss
        self.injections = injections
        self.config = GossipConfig()
        self.model = GossipModel(nodes, config=self.config, network=Network(loss=loss), seed=seed)
        self.rng = random.Random(f"bench/{seed}")

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        model, config, n = self.model, self.config, self.nodes
        warmup = WARMUP_ROUNDS + config.slack(n)
        timeouts = config.suspicion_timeout(n) + config.dead_timeout(n)
        horizon = 10 if self.kind == "spread" else config.slack(n) + 4 + math.ceil(timeouts / config.interval)
        rounds = warmup + BYTES_ROUNDS + math.ceil(0.37 * self.injections) + horizon
        # a bar per kind (two workers run the two kinds of a big size side by side)
        position = 1 + ("spread", "loss").index(self.kind)
        desc = f"model {n:,} {self.kind}"
        # tqdm makes a lock (a semaphore) even when disabled: in a worker, only on a terminal
        bar = (
            progress(total=rounds, unit="round", desc=desc, position=position, leave=False)
            if on_terminal(sys.stderr)
            else None
        )
        try:
            for _ in range(warmup):
                model.run_rounds(1)
                tick(bar)
            model.measure_bytes = True
            model.run_rounds(BYTES_ROUNDS)
            model.measure_bytes = False
            tick(bar, BYTES_ROUNDS)
            bytes_per_node_round = float(model.bytes_sent.sum()) / n / BYTES_ROUNDS
            for origin in self.rng.sample(range(n), self.injections):
                model.publish(origin)
                model.run_rounds(0.37)
            tick(bar, math.ceil(0.37 * self.injections))
            limit = model.now + horizon * config.interval
            while model.now < limit - 1e-9 and not (self.kind == "spread" and self.spread_done()):
                model.run_rounds(1)
                tick(bar)
        finally:
            if bar is not None:
                bar.close()
        spread_rounds, unreached = [], 0
        for index, origin in enumerate(model.origins):
            reached = np.delete(model.reached[index], origin)
            if np.isnan(reached).any():
                unreached += 1
                continue
            elapsed = float(reached.max()) - model.published_at[index]
            spread_rounds.append(math.ceil(elapsed / config.interval - 1e-9))
        elapsed_rounds = model.now / config.interval
        return {
            "engine": "model",
            "kind": self.kind,
            "nodes": n,
            "seed": self.seed,
            "loss": self.loss,
            "spread_rounds": spread_rounds,
            "unreached": unreached,
            "bytes_per_node_round": bytes_per_node_round,
            "messages_per_node_round": model.messages / n / elapsed_rounds,
            "false_deaths": model.false_deaths,
            "false_death_window_s": death_window(model.death_times),
            "false_suspicions": model.suspicions,
            "node_rounds": n * elapsed_rounds,
            "wall_s": time.perf_counter() - started,
        }

    def spread_done(self) -> bool:
        model = self.model
        return all(
            int(np.isnan(reached).sum()) <= 1  # the origin itself never "receives" its record
            for reached in model.reached
        )


Spec = tuple[str, str, int, int, float, int, bool]
"""(engine, kind, nodes, seed, loss, injections, summaries)"""


def run_trial(spec: Spec) -> dict[str, Any]:
    engine, kind, nodes, seed, loss, injections, summaries = spec
    if engine == "model":
        return ModelTrial(kind, nodes, seed, loss, injections).run()
    result = Trial(kind, nodes, seed, loss, injections, summaries).run()
    result["engine"] = "simulator"
    return result


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (the value at or above which 1 - q of the samples lie)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


def summarise(nodes: int, engine: str, results: list[dict[str, Any]], loss: float) -> dict[str, Any]:
    clean = [r for r in results if r["kind"] != "loss"]
    lossy = [r for r in results if r["kind"] == "loss"]
    spread = [x for r in clean for x in r["spread_rounds"]]
    crashes = [r["crash"] for r in results if "crash" in r]
    target = SPREAD_TARGETS.get(nodes)
    within = sum(1 for x in spread if target is not None and x <= target)
    per_round = [r["bytes_per_node_round"] for r in clean]
    bytes_target = BYTES_TARGET if nodes >= BYTES_TARGET_FROM else None
    return {
        "nodes": nodes,
        "engine": engine,
        "trials": {
            kind: sum(1 for r in results if r["kind"] == kind) for kind in ("spread", "crash", "loss")
        },
        "spread_rounds": summary(spread),
        "spread_unreached": sum(r["unreached"] for r in clean),
        "spread_target_rounds": target,
        "spread_within_target": within / len(spread) if spread else None,
        "spread_rounds_under_loss": summary([x for r in lossy for x in r["spread_rounds"]]),
        "detect_all_dead_rounds": summary([c["all_dead_rounds"] for c in crashes if c["complete"]]),
        "detect_all_dead_s": summary([c["all_dead_s"] for c in crashes if c["complete"]]),
        "detect_first_dead_s": summary([c["first_dead_s"] for c in crashes if c["first_dead_s"] is not None]),
        "detect_first_suspect_s": summary(
            [c["first_suspect_s"] for c in crashes if c["first_suspect_s"] is not None]
        ),
        "detect_incomplete": sum(1 for c in crashes if not c["complete"]),
        "bytes_per_node_round": summary(per_round),
        "bytes_target": bytes_target,
        "bytes_within_target": max(per_round) <= bytes_target if per_round and bytes_target else None,
        "messages_per_node_round": summary([r["messages_per_node_round"] for r in clean]),
        "loss": loss,
        "false_deaths_under_loss": sum(r["false_deaths"] for r in lossy),
        "false_death_window_s_under_loss": death_window(
            [t for r in lossy if r["false_death_window_s"] for t in r["false_death_window_s"]]
        ),
        "false_deaths_clean": sum(r["false_deaths"] for r in clean),
        "false_suspicions_per_node_round_under_loss": (
            sum(r["false_suspicions"] for r in lossy) / sum(r["node_rounds"] for r in lossy)
            if lossy
            else None
        ),
        "node_rounds_under_loss": sum(r["node_rounds"] for r in lossy),
        "wall_s": sum(r["wall_s"] for r in results),
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.{digits}f}"
    return f"{int(value):,}" if isinstance(value, int | float) else str(value)


def table(summaries: list[dict[str, Any]], config: GossipConfig) -> str:
    lines = [
        f"gossip benchmark (simulated): fanout {config.fanout}, push-pull, "
        f"{'digest summaries' if config.summaries else 'full digests'}, interval {config.interval:g} s, "
        f"suspicion x{config.suspicion_mult:g} (x interval x log10 N) + slack past "
        f"{config.beats_per_round} beats/round, dead x{config.dead_mult:g}",
        f"{'nodes':>11}  {'metric':<38} {'n':>5} {'p50':>9} {'p99':>9} {'max':>9}  {'target':<24} ok",
    ]
    for s in summaries:
        n = f"{s['nodes']} {'model' if s['engine'] == 'model' else 'sim'}"
        target = s["spread_target_rounds"]
        within = s["spread_within_target"]
        rows = [
            ("rounds until a new record is everywhere", s["spread_rounds"], None, None),
            (
                "  ... with target",
                None,
                f"<= {target} rounds in 99%" if target else "-",
                None
                if target is None or within is None
                else (within >= 0.99 and s["spread_unreached"] == 0, f"{within:.1%}"),
            ),
            (f"rounds until everywhere @ {s['loss']:.0%} loss", s["spread_rounds_under_loss"], None, None),
            ("crash -> first SUSPECT (s)", s["detect_first_suspect_s"], None, None),
            ("crash -> first DEAD (s)", s["detect_first_dead_s"], None, None),
            ("crash -> DEAD everywhere (s)", s["detect_all_dead_s"], None, None),
            ("crash -> DEAD everywhere (rounds)", s["detect_all_dead_rounds"], None, None),
            (
                "bytes sent per node per round",
                s["bytes_per_node_round"],
                f"<= {s['bytes_target']:,}" if s["bytes_target"] else None,
                None if s["bytes_within_target"] is None else (s["bytes_within_target"], "max"),
            ),
            ("messages sent per node per round", s["messages_per_node_round"], None, None),
        ]
        if not s["trials"]["crash"]:
            rows = [row for row in rows if not row[0].startswith("crash")]
        for name, stats, target_text, verdict in rows:
            cells = (
                ("", "", "", "") if stats is None else (stats["n"], stats["p50"], stats["p99"], stats["max"])
            )
            ok = "" if verdict is None else ("yes" if verdict[0] else "NO") + f" ({verdict[1]})"
            lines.append(
                f"{n:>11}  {name:<38} {fmt(cells[0]):>5} {fmt(cells[1]):>9} {fmt(cells[2]):>9} {fmt(cells[3]):>9}"
                f"  {target_text or '':<24} {ok}"
            )
        deaths = s["false_deaths_under_loss"] if s["trials"]["loss"] else None
        ok = "" if deaths is None else ("yes" if deaths == 0 else "NO")
        lines.append(
            f"{n:>11}  {'false deaths @ ' + format(s['loss'], '.0%') + ' loss (total)':<38} {'':>5}"
            f" {fmt(deaths):>9} {'':>9} {'':>9}  {'0':<24} {ok}"
        )
        lines.append(
            f"{'':>11}    over {round(s['node_rounds_under_loss']):,} node-rounds in {s['trials']['loss']} trial(s);"
            f" {fmt(s['false_suspicions_per_node_round_under_loss'], 3)} suspicions per node-round, all refuted;"
            f" false deaths without loss: {s['false_deaths_clean']}; records never spread: {s['spread_unreached']};"
            f" crashes never detected everywhere: {s['detect_incomplete']}"
        )
        window = s["false_death_window_s_under_loss"]
        if window:
            lines.append(
                f"{'':>11}    false deaths under loss from {window[0]:.0f} s to {window[1]:.0f} s after the start"
            )
    return "\n".join(lines)


def validation(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model against simulator, metric by metric, at each size both ran (ratio: model / simulator)."""
    by = {(s["nodes"], s["engine"]): s for s in summaries}
    metrics = {
        "bytes_per_node_round_p50": lambda s: s["bytes_per_node_round"]["p50"],
        "messages_per_node_round_p50": lambda s: s["messages_per_node_round"]["p50"],
        "spread_rounds_p50": lambda s: s["spread_rounds"]["p50"],
        "spread_rounds_p99": lambda s: s["spread_rounds"]["p99"],
        "spread_rounds_under_loss_p50": lambda s: s["spread_rounds_under_loss"]["p50"],
        "spread_rounds_under_loss_p99": lambda s: s["spread_rounds_under_loss"]["p99"],
        "false_deaths_under_loss": lambda s: s["false_deaths_under_loss"],
        "suspicions_per_node_round_under_loss": lambda s: s["false_suspicions_per_node_round_under_loss"],
    }
    out = []
    for nodes in sorted({n for n, engine in by if engine == "model"}):
        real, model = by.get((nodes, "simulator")), by[(nodes, "model")]
        if real is None:
            continue
        row: dict[str, Any] = {"nodes": nodes}
        for name, get in metrics.items():
            a, b = get(real), get(model)
            ratio = b / a if isinstance(a, int | float) and isinstance(b, int | float) and a else None
            row[name] = {"simulator": a, "model": b, "ratio": ratio}
        out.append(row)
    return out


def validation_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "model vs simulator (same config, seeds and trial counts; ratio = model / simulator)",
        f"{'nodes':>6}  {'metric':<38} {'simulator':>10} {'model':>10} {'ratio':>7}",
    ]
    for row in rows:
        for name, cell in row.items():
            if name == "nodes":
                continue
            lines.append(
                f"{row['nodes']:>6}  {name:<38} {fmt(cell['simulator'], 2):>10} {fmt(cell['model'], 2):>10}"
                f" {fmt(cell['ratio'], 3):>7}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--trials", type=int, help="spread trials per size (crash and loss trials scale with it)"
    )
    parser.add_argument(
        "--injections", type=int, help="records published per trial (5, or 10 from 300 nodes)"
    )
    parser.add_argument("--loss", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, default=Path("out/bench_gossip.json"))
    parser.add_argument("--quick", action="store_true", help="a few trials per size: a smoke run")
    parser.add_argument(
        "--full-digests", action="store_true", help="send the whole digest every exchange (the old protocol)"
    )
    parser.add_argument(
        "--model",
        action="store_true",
        help=f"also run the vectorised model at sizes up to {SIMULATOR_MAX} (above, only the model runs)",
    )
    parser.add_argument(
        "--no-validation",
        action="store_true",
        help=f"skip running simulator and model side by side at {VALIDATION_SIZES} when the model runs",
    )
    args = parser.parse_args(argv)

    runs: list[tuple[int, str]] = []  # (nodes, engine)
    for nodes in args.nodes:
        if nodes <= SIMULATOR_MAX:
            runs.append((nodes, "simulator"))
        if nodes > SIMULATOR_MAX or args.model:
            runs.append((nodes, "model"))
    if any(engine == "model" for _, engine in runs):
        if args.full_digests:
            parser.error("the model plays digest summaries only: --full-digests runs the simulator alone")
        if not args.no_validation:
            runs += [(n, e) for n in VALIDATION_SIZES for e in ("simulator", "model") if (n, e) not in runs]
    runs.sort(key=lambda run: (run[0], run[1] == "model"))  # the simulator's row first
    specs: list[Spec] = []
    for nodes, engine in runs:
        if args.trials is not None:
            counts = (args.trials, max(1, args.trials // 2), max(1, args.trials // 4))
        else:
            table_ = QUICK_TRIALS if args.quick else DEFAULT_TRIALS
            counts = table_.get(nodes, table_[100] if nodes <= 300 else table_[1000])
        for kind, count in zip(("spread", "crash", "loss"), counts, strict=True):
            if engine == "model" and kind == "crash":
                continue  # the model crashes nobody
            loss = args.loss if kind == "loss" else 0.0
            injections = args.injections or default_injections(nodes)
            seeds = (args.seed * 100_000 + nodes * 100 + i for i in range(count))
            specs += [(engine, kind, nodes, seed, loss, injections, not args.full_digests) for seed in seeds]
    specs.sort(key=lambda s: -s[2])  # biggest first, so two workers finish together

    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with (
        context.Pool(args.workers) as pool,
        progress(total=len(specs), unit="trial", desc="gossip trials") as bar,
    ):
        for result in pool.imap_unordered(run_trial, specs):
            results.append(result)
            bar.set_postfix(
                nodes=result["nodes"],
                engine=result["engine"],
                kind=result["kind"],
                wall=f"{result['wall_s']:.0f}s",
            )
            bar.update()
    elapsed = time.perf_counter() - started

    config = GossipConfig(summaries=not args.full_digests)
    summaries = [
        summarise(n, engine, [r for r in results if (r["nodes"], r["engine"]) == (n, engine)], args.loss)
        for n, engine in runs
    ]
    checks = validation(summaries)
    print(table(summaries, config))
    if checks:
        print(validation_table(checks))
    print(f"{len(specs)} simulations in {elapsed:.0f} s wall on {args.workers} worker(s)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "gossip",
        "command": " ".join(sys.argv),
        "config": asdict(config),
        "network": asdict(Network()),
        "targets": {
            "spread_rounds_p99": SPREAD_TARGETS,
            "false_deaths_at_loss": 0,
            "bytes_per_node_round": {"max": BYTES_TARGET, "from_nodes": BYTES_TARGET_FROM},
        },
        "summaries": summaries,
        "validation": checks,
        "trials": sorted(results, key=lambda r: (r["nodes"], r["engine"], r["kind"], r["seed"])),
        "wall_s": elapsed,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
