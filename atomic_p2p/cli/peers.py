"""``atomic peers``: join the gossip through a seed, print what the network says about itself.

The command joins as a member that hosts nothing and lists no address (nobody gossips to it; it
pulls), waits for its first exchange with a seed plus one more round (so a second partner fills
in what the seed lacked), prints every member it learned of, and leaves with a signed Leave.

States are this observer's own view. A fresh member is never handed tombstones (DEAD or LEFT
members) by design, so members that are already gone simply do not appear; a longer ``--wait``
lets the observer see members turn SUSPECT or DEAD while it watches. Each model shows its task
kind and its advertised contract (``x: float32[B<=256, 64] -> logits: float32[B, 10]``), led
by ``text`` for a model that takes text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atomic_p2p.cli.arguments import add_peer_arguments, positive
from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.errors import UnavailableError

if TYPE_CHECKING:
    from atomic_p2p.gossip import GossipConfig
    from atomic_p2p.gossip.records import ModelAdvert
    from atomic_p2p.gossip.transport import GossipAgent

DEFAULT_WAIT_S = 5.0
DEFAULT_INTERVAL_S = 0.5
_STATE_ORDER = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "peers",
        help="list the peers the gossip knows: models, prices, load, state",
        description="Join the gossip through --bootstrap as a member hosting nothing, wait for the "
        "first exchange plus one round, and print every member: peer id, address, state, models, "
        "capabilities, price hints, load (in flight/capacity) and advertised latency.",
    )
    add_peer_arguments(parser, "--bootstrap")
    parser.add_argument(
        "--wait",
        type=positive,
        default=DEFAULT_WAIT_S,
        metavar="S",
        help=f"seconds to wait for the first exchange (default {DEFAULT_WAIT_S:g}); "
        "the observer then gossips one more round",
    )
    parser.add_argument(
        "--interval",
        type=positive,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help=f"the observer's gossip interval (default {DEFAULT_INTERVAL_S:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> ExitCode:
    from atomic_p2p.gossip import GossipConfig

    config = GossipConfig(interval=args.interval)
    view = asyncio.run(observe(args.bootstrap, config, args.wait, insecure=args.insecure))
    print(json.dumps(view.to_json(), indent=2) if args.json else render(view))
    return ExitCode.OK


@dataclass(frozen=True, slots=True)
class NetworkView:
    observer: str
    bootstrap: tuple[str, ...]
    exchanges: int
    members: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "observer": self.observer,
            "bootstrap": list(self.bootstrap),
            "exchanges": self.exchanges,
            "members": list(self.members),
        }


async def observe(
    bootstrap: list[str], config: GossipConfig, wait_s: float, *, insecure: bool = False
) -> NetworkView:
    """Join through ``bootstrap``, gossip until the first exchange plus one round, then leave
    (``insecure``: plaintext peers too)."""
    from atomic_p2p.channels import ChannelPool
    from atomic_p2p.gossip.transport import GossipAgent
    from atomic_p2p.identity import Identity

    pool = ChannelPool(allow_plaintext=insecure)
    agent = GossipAgent(Identity.generate(), config, seeds=bootstrap, pool=pool)
    await agent.start()
    try:
        if not await agent.wait_until(lambda: agent.exchanges_completed > 0, wait_s):
            raise UnavailableError(
                f"no gossip answer from {', '.join(bootstrap)} within {wait_s:g} s; "
                "check the address, or that the peer is running (a larger --wait helps a slow one)"
            )
        # One more round: it now knows members besides the seed, and asks ``fanout`` of them.
        settled = agent.exchanges_completed + config.fanout
        await agent.wait_until(lambda: agent.exchanges_completed >= settled, 2 * config.interval)
        return NetworkView(
            agent.membership.peer_id.hex,
            tuple(bootstrap),
            agent.exchanges_completed,
            tuple(members(agent)),
        )
    finally:
        await agent.stop(leave=True)
        await pool.close()


def members(agent: GossipAgent) -> list[dict[str, Any]]:
    """Every member the agent knows (itself excluded), best state first, as plain values."""
    from atomic_p2p.identity import PeerId

    membership = agent.membership
    rows: list[dict[str, Any]] = []
    for raw in membership.digest():
        peer = PeerId(raw)
        record, state, load = membership.record_of(peer), membership.state_of(peer), membership.load_of(peer)
        if peer == membership.peer_id or record is None or state is None:
            continue
        rows.append(
            {
                "peer_id": peer.hex,
                "addresses": list(record.addresses),
                "state": state.value,
                "load": None
                if load is None
                else {
                    "in_flight": load.in_flight,
                    "capacity": load.capacity,
                    "utilization": load.utilization,
                },
                "models": [
                    {
                        "model_id": model.model_id,
                        "capabilities": list(model.capabilities),
                        "price_hint": model.price_hint,
                        "typical_latency_ms": model.typical_latency_ms,
                        "strategy": model.strategy,
                        "max_batch": model.constraints.max_batch,
                        "kind": model.kind.value if model.kind else None,
                        "contract": _contract_text(model),
                        "takes_text": model.takes_text,
                    }
                    for model in record.models
                ],
            }
        )
    rows.sort(
        key=lambda row: (_STATE_ORDER[row["state"]], not row["models"], row["addresses"], row["peer_id"])
    )
    return rows


def _contract_text(model: ModelAdvert) -> str | None:
    """The advertised contract, with ``text`` for a model that takes text (``text`` alone when it
    declares no tensor inputs)."""
    contract = model.contract
    described = None if contract is None else contract.describe(model.constraints.max_batch)
    if not model.takes_text:
        return described
    return "text" if described is None else f"text | {described}"


def render(view: NetworkView) -> str:
    """One line per hosted model (a member's own columns on its first line only)."""
    columns = (
        "peer",
        "address",
        "state",
        "model",
        "capabilities",
        "price",
        "latency ms",
        "load",
        "kind",
        "contract",
    )
    lines: list[tuple[str, ...]] = []
    for member in view.members:
        load = member["load"]
        own = (
            member["peer_id"][:8],
            ",".join(member["addresses"]) or "-",
            member["state"],
        )
        load_text = f"{load['in_flight']}/{load['capacity']}" if load else "-"
        if not member["models"]:
            lines.append((*own, "-", "(hosts nothing)", "-", "-", load_text, "", ""))
        for index, model in enumerate(member["models"]):
            first = index == 0
            lines.append(
                (
                    *(own if first else ("", "", "")),
                    model["model_id"],
                    ",".join(model["capabilities"]),
                    f"{model['price_hint']:g}",
                    f"{model['typical_latency_ms']:.2f}",
                    load_text if first else "",
                    model["kind"] or "-",
                    model["contract"] or "-",
                )
            )
    widths = [max(len(row[i]) for row in (columns, *lines)) for i in range(len(columns))]
    hosting = sum(1 for m in view.members if m["models"] and m["state"] == "alive")
    header = (
        f"{len(view.members)} members ({hosting} alive hosting models) via {', '.join(view.bootstrap)}; "
        f"observer {view.observer[:8]}, {view.exchanges} exchanges"
    )
    table = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (columns, *lines)
    ]
    return "\n".join([header, *table])
