"""``atomic bids``: recent auction decisions from the requester's store, with their rationale.

Each decision shows the winner and its price (and how the price was set), the weights and
settings in force, every ranked bid with its score, score components, claims and the
evaluator's expectations, every excluded bid with its reason, and the peers that sent no bid.
The rationale is read as the stored JSON (``Rationale.to_dict()``, documented in
``docs/store.md``) rather than through the SDK, so this command does not import torch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.cli.stored import add_store_argument, open_store, resolve_peer
from atomic_p2p.cli.tables import clock, number, short, table
from atomic_p2p.store import DecisionRecord


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bids",
        help="show recent auction decisions and why they went that way",
        description="Print the newest decisions in the requester's store: winner, price, weights, "
        "each ranked bid's score and components, excluded bids with reasons, and no-bids.",
    )
    add_store_argument(parser)
    parser.add_argument(
        "--limit", type=_count, default=10, metavar="N", help="how many decisions, newest first (default 10)"
    )
    parser.add_argument(
        "--peer", metavar="HEX", help="only decisions this peer won (its id, or a unique prefix of it)"
    )
    parser.add_argument("--capability", metavar="C", help="only decisions for this capability")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> ExitCode:
    with open_store(args.store) as store:
        peer = resolve_peer(store, args.peer)
        decisions = store.recent_decisions(args.limit, peer=peer, capability=args.capability)
        path = str(store.path)
    print(render_json(path, decisions) if args.json else render_text(path, decisions))
    return ExitCode.OK


def decision_json(decision: DecisionRecord) -> dict[str, Any]:
    return {
        "at_ms": decision.at_ms,
        "request_id": decision.request_id,
        "task_id": decision.task_id,
        "capability": decision.capability,
        "winner_peer": decision.winner_peer,
        "winner_model": decision.winner_model,
        "price": decision.price,
        "rationale": dict(decision.rationale),
    }


def render_json(path: str, decisions: Sequence[DecisionRecord]) -> str:
    return json.dumps({"store": path, "decisions": [decision_json(d) for d in decisions]}, indent=2)


def render_text(path: str, decisions: Sequence[DecisionRecord]) -> str:
    if not decisions:
        return f"no decisions in {path} (that match)"
    blocks = ["\n".join(_decision_lines(decision)) for decision in decisions]
    return f"{len(decisions)} decision(s) from {path}, newest first\n\n" + "\n\n".join(blocks)


def _decision_lines(decision: DecisionRecord) -> list[str]:
    rationale = decision.rationale
    request = f"{str(decision.request_id)[:8]}/{decision.task_id}"
    if decision.winner_peer is None:
        outcome = "no winner: nothing was eligible"
    else:
        note = f" ({rationale['price_note']})" if rationale.get("price_note") else ""
        outcome = (
            f"winner {short(decision.winner_peer)} {decision.winner_model} "
            f"at {number(decision.price, 4)}{note}"
        )
    lines = [f"{clock(decision.at_ms)}  {request}  {decision.capability}  {outcome}"]
    lines.append("  " + _settings_line(rationale))
    if rationale.get("floor_note"):
        lines.append(f"  floor: {rationale['floor_note']}")
    candidates = rationale.get("candidates") or []
    if candidates:
        lines += _candidate_table(candidates, list(rationale.get("weights") or {}))
    for excluded in rationale.get("excluded") or []:
        bid = excluded.get("bid", {})
        lines.append(
            f"  excluded {short(bid.get('peer'))} {bid.get('model_id', '?')} at {bid.get('address', '?')}: "
            f"[{excluded.get('kind', '?')}] {excluded.get('reason', '')}"
        )
    lines += [f"  no bid: {no_bid}" for no_bid in rationale.get("no_bids") or []]
    return lines


def _settings_line(rationale: Mapping[str, Any]) -> str:
    weights = rationale.get("weights") or {}
    settings = rationale.get("settings") or {}
    parts = [
        "weights " + (", ".join(f"{name} {value:.2f}" for name, value in weights.items()) or "-"),
        f"exploration {settings.get('exploration', '-')}",
        f"pricing {settings.get('pricing', '-')}",
        f"time left {number(settings.get('time_left_ms'), 0)} ms",
        f"budget {number(settings.get('budget'), 4)}",
        f"bucket {settings.get('bucket') or '-'}",
    ]
    return "; ".join(parts)


def _candidate_table(candidates: Sequence[Mapping[str, Any]], components: list[str]) -> list[str]:
    for candidate in candidates:
        components += [name for name in candidate.get("components", {}) if name not in components]
    headers = [
        "rank", "peer", "model", "score", *components, "conf", "lat ms", "cost",
        "exp acc", "exp lat ms", "evidence", "bonus", "penalty",
    ]  # fmt: skip
    rows = []
    for candidate in candidates:
        bid = candidate.get("bid", {})
        claimed = candidate.get("claimed", {})
        expected = candidate.get("expected", {})
        adjustments = candidate.get("adjustments", {})
        scores = candidate.get("components", {})
        rows.append(
            [
                str(candidate.get("rank", "-")), short(bid.get("peer")), str(bid.get("model_id", "?")),
                number(candidate.get("score")), *(number(scores.get(name)) for name in components),
                number(claimed.get("confidence")), number(claimed.get("latency_ms"), 1),
                number(claimed.get("cost"), 4), number(expected.get("expected_accuracy")),
                number(expected.get("expected_latency_ms"), 1), number(expected.get("evidence"), 1),
                number(adjustments.get("exploration_bonus")), number(adjustments.get("utilization_penalty")),
            ]
        )  # fmt: skip
    return table(headers, rows, right=set(range(3, len(headers))))
