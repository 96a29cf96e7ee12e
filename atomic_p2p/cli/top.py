"""``atomic top``: a live terminal view of the network, from the gossip and a requester's store.

How this works
--------------
The command joins the gossip through ``--bootstrap`` as a member that hosts nothing (as ``atomic
peers`` does) and, every ``--refresh`` seconds, takes a :class:`Snapshot`: every member its gossip
table holds (state, addresses, load, models with prices and latency), and from the requester's
store (read-only; the store a running requester writes) each peer's wins and payments and the
newest decisions. :func:`render` turns a snapshot into rich tables; ``rich.live.Live`` redraws
them in place. ``q`` (read from the terminal in cbreak mode) or Ctrl-C ends it; it leaves the
gossip with a signed leave and puts the terminal back as it was.

When stdout is not a terminal (a pipe, a file) or with ``--once`` it waits for the first exchange
plus one round, prints the tables once as plain text and exits: ``atomic top ... | grep``.
It is built on rich rather than textual: a read-only view needs tables and in-place redraws, not a
widget framework, and rich renders the same tables to a terminal and to a pipe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomic_p2p.cli.arguments import add_peer_arguments, positive, positive_int
from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.cli.tables import clock, number, short
from atomic_p2p.errors import UnavailableError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from atomic_p2p.gossip.transport import GossipAgent
    from atomic_p2p.store import DecisionRecord, Store

DEFAULT_REFRESH_S = 1.0
DEFAULT_INTERVAL_S = 0.5
DEFAULT_WAIT_S = 5.0
DEFAULT_DECISIONS = 8
QUIT_KEYS = b"qQ"
PIPE_WIDTH = 400  # columns for plain output: wide enough for any row, trailing blanks stripped


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "top",
        help="a live view of the network: peers, models, state, load, prices, wins, recent decisions",
        description="Join the gossip through --bootstrap as a member hosting nothing and redraw, every "
        "--refresh seconds, each peer's state, models, prices and load, with its wins and payments and "
        "the newest decisions from the requester's store. q or Ctrl-C quits. Over a pipe, or with "
        "--once, print the tables once and exit.",
    )
    add_peer_arguments(parser, "--bootstrap")
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DB",
        help="the requester's SQLite store for wins, payments and decisions (default: atomic run's, "
        "if it exists); opened read-only",
    )
    parser.add_argument(
        "--refresh",
        type=positive,
        default=DEFAULT_REFRESH_S,
        metavar="S",
        help=f"seconds between redraws (default {DEFAULT_REFRESH_S:g})",
    )
    parser.add_argument(
        "--interval",
        type=positive,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help=f"the observer's gossip interval (default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--wait",
        type=positive,
        default=DEFAULT_WAIT_S,
        metavar="S",
        help=f"seconds to wait for the first gossip exchange (default {DEFAULT_WAIT_S:g})",
    )
    parser.add_argument(
        "--decisions",
        type=positive_int,
        default=DEFAULT_DECISIONS,
        metavar="N",
        help=f"how many recent decisions to show (default {DEFAULT_DECISIONS})",
    )
    parser.add_argument("--once", action="store_true", help="print the tables once and exit")
    parser.set_defaults(handler=handle)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one redraw shows: the gossip's members and, with a store, its wins and decisions."""

    at_ms: int
    observer: str
    bootstrap: tuple[str, ...]
    members: tuple[dict[str, Any], ...]  # as atomic_p2p.cli.peers.members gives them
    store: str | None = None
    wins: Mapping[str, int] = field(default_factory=dict)  # peer id (hex) -> auctions won
    paid: Mapping[str, float] = field(default_factory=dict)  # peer id (hex) -> net amount paid
    decisions: tuple[DecisionRecord, ...] = ()


def take_snapshot(
    agent: GossipAgent, bootstrap: Sequence[str], store: Store | None, decisions: int
) -> Snapshot:
    from atomic_p2p.cli.peers import members

    seen = Snapshot(
        at_ms=time.time_ns() // 1_000_000,
        observer=agent.membership.peer_id.hex,
        bootstrap=tuple(bootstrap),
        members=tuple(members(agent)),
    )
    if store is None:
        return seen
    paid = {
        peer: kinds.get("charge", 0.0) + kinds.get("probe", 0.0) - kinds.get("refund", 0.0)
        for peer, kinds in store.ledger_totals().items()
    }
    return replace(
        seen,
        store=str(store.path),
        wins=store.wins(),
        paid=paid,
        decisions=tuple(store.recent_decisions(decisions)),
    )


def render(snapshot: Snapshot, *, live: bool = True) -> RenderableType:
    """The header, the peers table and the decisions table (``live``: boxed, with the quit hint)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    frame = box.SIMPLE_HEAD if live else None
    hosting = sum(1 for m in snapshot.members if m["models"] and m["state"] == "alive")
    header = (
        f"atomic top{' (q or Ctrl-C quits)' if live else ''}  {clock(snapshot.at_ms)}  "
        f"{len(snapshot.members)} members, {hosting} alive hosting models, via "
        f"{', '.join(snapshot.bootstrap)}; store {snapshot.store or '-'}"
    )
    peers = Table(box=frame, show_edge=False, pad_edge=False, title="peers", title_justify="left")
    for name, right in _PEER_COLUMNS:
        peers.add_column(name, justify="right" if right else "left", no_wrap=True)
    for row in _peer_rows(snapshot):
        peers.add_row(*row)
    decisions = Table(
        box=frame, show_edge=False, pad_edge=False, title="recent decisions", title_justify="left"
    )
    for name, right in _DECISION_COLUMNS:
        decisions.add_column(name, justify="right" if right else "left", no_wrap=True)
    for decision in snapshot.decisions:
        decisions.add_row(*_decision_row(decision))
    parts: list[RenderableType] = [Text(header, style="bold" if live else ""), peers]
    if snapshot.store is not None:
        parts.append(decisions if snapshot.decisions else Text("no decisions in the store yet"))
    return Group(*parts)


_PEER_COLUMNS = (
    ("peer", False), ("state", False), ("address", False), ("model", False), ("capabilities", False),
    ("price", True), ("latency ms", True), ("load", True), ("wins", True), ("paid", True),
)  # fmt: skip
_DECISION_COLUMNS = (
    ("time", False), ("capability", False), ("winner", False), ("model", False), ("price", True),
    ("bids", True), ("no bids", True),
)  # fmt: skip


def _peer_rows(snapshot: Snapshot) -> Iterator[tuple[str, ...]]:
    """One row per hosted model; a member's own columns on its first row only."""
    for member in snapshot.members:
        peer, load = member["peer_id"], member["load"]
        load_text = f"{load['in_flight']}/{load['capacity']}" if load else "-"
        own = (short(peer), member["state"], ",".join(member["addresses"]) or "-")
        money = (str(snapshot.wins.get(peer, 0)), number(snapshot.paid.get(peer), 4))
        models = member["models"] or [None]
        for index, model in enumerate(models):
            first = index == 0
            if model is None:
                described = ("(hosts nothing)", "-", "-", "-")
            else:
                described = (
                    model["model_id"],
                    ",".join(model["capabilities"]),
                    f"{model['price_hint']:g}",
                    f"{model['typical_latency_ms']:.2f}",
                )
            yield (
                *(own if first else ("", "", "")),
                *described,
                load_text if first else "",
                *(money if first else ("", "")),
            )


def _decision_row(decision: DecisionRecord) -> tuple[str, ...]:
    rationale = decision.rationale
    return (
        clock(decision.at_ms)[11:],  # the time of day: the date is in the header
        decision.capability,
        short(decision.winner_peer),
        decision.winner_model or "-",
        number(decision.price, 4),
        str(len(rationale.get("candidates") or [])),
        str(len(rationale.get("no_bids") or [])),
    )


def handle(args: argparse.Namespace) -> ExitCode:
    live = sys.stdout.isatty() and not args.once
    return asyncio.run(watch(args, live=live))


async def watch(args: argparse.Namespace, *, live: bool) -> ExitCode:
    from atomic_p2p.channels import ChannelPool
    from atomic_p2p.gossip import GossipConfig
    from atomic_p2p.gossip.transport import GossipAgent
    from atomic_p2p.identity import Identity

    config = GossipConfig(interval=args.interval)
    with _open_store(args.store) as store:
        pool = ChannelPool(allow_plaintext=args.insecure)
        agent = GossipAgent(Identity.generate(), config, seeds=args.bootstrap, pool=pool)
        await agent.start()
        try:
            if not await agent.wait_until(lambda: agent.exchanges_completed > 0, args.wait):
                raise UnavailableError(
                    f"no gossip answer from {', '.join(args.bootstrap)} within {args.wait:g} s; check "
                    "the address, or that the peer is running (a larger --wait helps a slow one)"
                )
            settled = agent.exchanges_completed + config.fanout  # one more round fills the table in
            await agent.wait_until(lambda: agent.exchanges_completed >= settled, 2 * config.interval)

            def snapshot() -> Snapshot:
                return take_snapshot(agent, args.bootstrap, store, args.decisions)

            if live:
                await _live(snapshot, args.refresh)
            else:
                print(plain(render(snapshot(), live=False)))
        finally:
            await agent.stop(leave=True)
            await pool.close()
    return ExitCode.OK


@contextlib.contextmanager
def _open_store(path: Path | None) -> Iterator[Store | None]:
    """The store at ``path`` (read-only); without ``path``, ``atomic run``'s if it exists, else none."""
    from atomic_p2p.cli.keygen import default_store_path
    from atomic_p2p.cli.stored import open_store

    if path is None and not default_store_path().exists():
        yield None
        return
    with open_store(path) as store:
        yield store


def plain(renderable: RenderableType) -> str:
    """``renderable`` as plain text as wide as its rows (a pipe has no width; rich would wrap
    at 80 columns), without trailing blanks."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=PIPE_WIDTH, color_system=None, highlight=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())  # type: ignore[attr-defined]


async def _live(snapshot: Callable[[], Snapshot], refresh_s: float) -> None:
    """Redraw every ``refresh_s`` until q or Ctrl-C (or SIGTERM)."""
    from rich.live import Live

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        with (
            _keys(loop, stop.set),
            Live(render(snapshot()), auto_refresh=False) as view,
        ):
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), refresh_s)
                view.update(render(snapshot()), refresh=True)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def _keys(loop: asyncio.AbstractEventLoop, quit: Callable[[], None]) -> Iterator[None]:
    """Read keys from the terminal one at a time (cbreak mode: Ctrl-C still signals) and call
    ``quit`` on q; the terminal's settings are restored on exit."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    descriptor = sys.stdin.fileno()
    saved = termios.tcgetattr(descriptor)
    tty.setcbreak(descriptor)

    def readable() -> None:
        pressed = os.read(descriptor, 64)
        if not pressed or any(key in QUIT_KEYS for key in pressed):
            quit()

    loop.add_reader(descriptor, readable)
    try:
        yield
    finally:
        loop.remove_reader(descriptor)
        termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)
