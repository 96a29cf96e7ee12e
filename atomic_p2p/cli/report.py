"""How ``atomic run`` shows an auction: a text report for people, a JSON document for programs.

The text report is one table of every answer (ranked bids, excluded bids, no-bids and invalid
bids, each with why), then the winner, the price, the fallbacks, the result and the timings.
The JSON document carries the same facts with full peer ids and every number unrounded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from atomic_p2p.errors import AtomicError, NoBidsError
from atomic_p2p.requester import Attempt, BidInfo, NoBidInfo, NoBidKind, Result
from atomic_p2p.requester.transport import status_name

PREVIEW_ROWS = 16
JSON_MAX_VALUES = 1024


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  " + "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _bid_cells(bid: BidInfo) -> list[str]:
    return [
        bid.peer_id.short,
        bid.address,
        bid.model_id or "?",
        f"{bid.confidence:.3f}",
        f"{bid.expected_latency_ms:.1f}",
        f"{bid.cost:.3f}",
    ]


def _answer_rows(result: Result) -> list[list[str]]:
    rows = [[str(s.rank), *_bid_cells(s.item), f"{s.score:.3f}", "yes", ""] for s in result.bids]
    rows += [["-", *_bid_cells(e.item), "-", "yes", f"excluded: {e.reason}"] for e in result.excluded]
    for no_bid in result.no_bids:
        peer = no_bid.peer_id.short if no_bid.peer_id else "-"
        verified = "NO" if no_bid.kind is NoBidKind.INVALID else "-"
        note = f"{no_bid.kind.value}: {no_bid.reason}" + (f" ({no_bid.detail})" if no_bid.detail else "")
        rows.append(["-", peer, no_bid.address, "-", "-", "-", "-", "-", verified, note])
    return rows


def _attempt_line(attempt: Attempt) -> str:
    bid, error = attempt.bid, attempt.error
    return (
        f"{bid.peer_id.short} ({bid.model_id}) at {bid.address} failed after {attempt.elapsed_ms:.0f} ms: "
        f"[{status_name(error) if error else 'OK'}] {error}"
    )


def _output_summary(name: str, tensor: torch.Tensor) -> str:
    head = f"{name} {str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"
    if tensor.dim() == 2 and tensor.is_floating_point() and tensor.shape[1] > 1:
        labels = tensor[:PREVIEW_ROWS].argmax(dim=1).tolist()
        more = " ..." if tensor.shape[0] > PREVIEW_ROWS else ""
        return f"{head}; argmax per row: {' '.join(map(str, labels))}{more}"
    values = tensor.flatten()[:8].tolist()
    shown = " ".join(f"{value:.4g}" if isinstance(value, float) else str(value) for value in values)
    return f"{head}; first values: {shown}{' ...' if tensor.numel() > 8 else ''}"


def render_text(result: Result, priority: str) -> str:
    weights = ", ".join(f"{name} {value:.2f}" for name, value in result.weights.as_dict().items())
    headers = [
        "rank",
        "peer",
        "address",
        "model",
        "confidence",
        "latency ms",
        "cost",
        "score",
        "verified",
        "",
    ]
    winner = result.winner
    lines = [
        f"auction {result.request_id.hex()[:8]} for {result.capability}, priority {priority} ({weights})",
        "",
        *_table(headers, _answer_rows(result), right={0, 4, 5, 6, 7}),
        "",
        f"winner    {winner.peer_id.short} ({winner.model_id}) at {winner.address}, "
        f"score {result.winner_score.score:.3f}",
        f"price     {result.price:.3f} (bid {winner.cost:.3f})",
        "fallbacks " + ("none" if not result.fallbacks else str(len(result.fallbacks))),
        *(f"          {_attempt_line(attempt)}" for attempt in result.fallbacks),
        *(f"result    {_output_summary(name, tensor)}" for name, tensor in result.outputs.items()),
        f"timings   bids {result.timings.bids_ms:.1f} ms, verify {result.timings.verify_ms:.1f} ms, "
        f"execute {result.timings.execute_ms:.1f} ms, total {result.timings.total_ms:.1f} ms",
    ]
    return "\n".join(lines)


def _bid_json(bid: BidInfo) -> dict[str, Any]:
    return {
        "peer_id": bid.peer_id.hex,
        "address": bid.address,
        "task_id": bid.task_id,
        "model_id": bid.model_id,
        "confidence": bid.confidence,
        "expected_latency_ms": bid.expected_latency_ms,
        "cost": bid.cost,
        "valid_until_ms": bid.valid_until_ms,
        "strategy": bid.strategy,
    }


def _no_bid_json(no_bid: NoBidInfo) -> dict[str, Any]:
    return {
        "address": no_bid.address,
        "peer_id": no_bid.peer_id.hex if no_bid.peer_id else None,
        "kind": no_bid.kind.value,
        "reason": no_bid.reason,
        "detail": no_bid.detail,
    }


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    error = attempt.error
    return {
        "peer_id": attempt.bid.peer_id.hex,
        "address": attempt.bid.address,
        "model_id": attempt.bid.model_id,
        "ok": attempt.ok,
        "elapsed_ms": attempt.elapsed_ms,
        "code": status_name(error) if error else None,
        "error": str(error) if error else None,
    }


def _output_json(tensor: torch.Tensor) -> dict[str, Any]:
    document: dict[str, Any] = {
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
    }
    if tensor.dim() == 2 and tensor.is_floating_point() and tensor.shape[1] > 1:
        document["argmax"] = tensor.argmax(dim=1).tolist()
    if tensor.numel() <= JSON_MAX_VALUES:
        document["values"] = tensor.float().tolist() if tensor.dtype == torch.bfloat16 else tensor.tolist()
    return document


def render_json(result: Result, priority: str) -> str:
    document = {
        "ok": True,
        "request_id": result.request_id.hex(),
        "capability": result.capability,
        "priority": priority,
        "weights": result.weights.as_dict(),
        "winner": _bid_json(result.winner),
        "price": result.price,
        "bids": [
            {**_bid_json(s.item), "rank": s.rank, "score": s.score, "components": dict(s.components)}
            for s in result.bids
        ],
        "excluded": [{**_bid_json(e.item), "reason": e.reason} for e in result.excluded],
        "no_bids": [_no_bid_json(no_bid) for no_bid in result.no_bids],
        "attempts": [_attempt_json(attempt) for attempt in result.attempts],
        "timings": {
            "bids_ms": result.timings.bids_ms,
            "verify_ms": result.timings.verify_ms,
            "execute_ms": result.timings.execute_ms,
            "total_ms": result.timings.total_ms,
        },
        "outputs": {name: _output_json(tensor) for name, tensor in result.outputs.items()},
    }
    return json.dumps(document, indent=2)


def hint(error: AtomicError, capability: str) -> str:
    """What to try next after a failed auction."""
    if isinstance(error, NoBidsError):
        return (
            f"check that the peers are running and serve {capability!r}, that the inputs match what "
            "their models take, and that --deadline and --max-cost leave room for their terms"
        )
    return "the peers bid but none delivered in time: retry with a longer --deadline, or other peers"


def render_failure(error: AtomicError, capability: str, as_json: bool) -> str:
    if as_json:
        document = {
            "ok": False,
            "error": type(error).__name__,
            "code": status_name(error),
            "message": str(error),
            "hint": hint(error, capability),
        }
        return json.dumps(document, indent=2)
    return f"atomic run: {error}\nwhat next: {hint(error, capability)}"
