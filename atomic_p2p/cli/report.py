"""How ``atomic run`` shows an auction: a text report for people, a JSON document for programs.

The text report is one table of every answer (ranked bids, excluded bids, no-bids and invalid
bids, each with why), then the winner, the price, the fallbacks, the result and the timings.
The JSON document carries the same facts with full peer ids and every number unrounded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from atomic_p2p.errors import AtomicError, NoBidsError
from atomic_p2p.requester import Attempt, BidInfo, GraphResult, NoBidInfo, NoBidKind, Result
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


def render_text(result: Result, profile: str) -> str:
    return "\n".join(part for part in (_result_text(result, profile), _report_line([result])) if part)


def _report_line(results: Sequence[Result]) -> str:
    """How to feed an outcome back for each delivered task (ids as `atomic bids` shows them)."""
    ids = " ".join(_short_ref(result.task_ref) for result in results if result.task_ref)
    return f"report    how good it was: atomic report {ids} SCORE (0..1)" if ids else ""


def _short_ref(task_ref: str) -> str:
    request, _, task = task_ref.partition("/")
    return f"{request[:8]}/{task}"


def render_graph_text(graph: GraphResult, profile: str) -> str:
    """One auction as :func:`render_text`; a sharded batch as each shard's auction, then the whole."""
    if len(graph.results) == 1:
        (result,) = graph.results.values()
        return render_text(result, profile)
    rows = [next(iter(r.outputs.values())).shape[0] if r.outputs else 0 for r in graph.results.values()]
    blocks = [
        f"sharded into {len(graph.results)} microtasks of {', '.join(map(str, rows))} rows "
        "(the batch exceeds what one peer takes)"
    ]
    for name, result in graph.results.items():
        blocks += ["", f"--- {name}", _result_text(result, profile)]
    blocks += [
        "",
        f"price     {graph.price:.3f} in all",
        *(f"result    {_output_summary(name, tensor)}" for name, tensor in graph.outputs.items()),
        f"timings   total {graph.total_ms:.1f} ms",
        _report_line(list(graph.results.values())),
    ]
    return "\n".join(blocks).rstrip()


def _result_text(result: Result, profile: str) -> str:
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
        f"auction {result.request_id.hex()[:8]} for {result.capability}, weights {profile} ({weights})",
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


def render_json(result: Result, profile: str) -> str:
    return json.dumps(_result_json(result, profile), indent=2)


def render_graph_json(graph: GraphResult, profile: str) -> str:
    """One auction as :func:`render_json`; a sharded batch as ``shards`` (each one auction's
    document) with the combined ``outputs`` and the total ``price``."""
    if len(graph.results) == 1:
        (result,) = graph.results.values()
        return render_json(result, profile)
    document = {
        "ok": True,
        "weights_profile": profile,
        "price": graph.price,
        "total_ms": graph.total_ms,
        "shards": [{"name": name, **_result_json(r, profile)} for name, r in graph.results.items()],
        "outputs": {name: _output_json(tensor) for name, tensor in graph.outputs.items()},
    }
    return json.dumps(document, indent=2)


def _result_json(result: Result, profile: str) -> dict[str, Any]:
    document = {
        "ok": True,
        "request_id": result.request_id.hex(),
        "capability": result.capability,
        "weights_profile": profile,
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
        "task_ref": result.task_ref,
    }
    return document


# What to try next, by what the peers said (first match first; the failure lists every answer).
_HINTS = (
    ("bad_input_spec", "the inputs do not match what the models take: `atomic peers --bootstrap ADDR` "
     "shows each model's contract (input names, dtypes, shapes); --input-name renames a bare tensor"),
    ("unknown_capability", "a peer does not serve {capability!r}: each such decline above lists what it "
     "offers, and `atomic peers --bootstrap ADDR` lists every capability on the network"),
    ("unreachable", "a peer did not answer: check that `atomic-peer` runs at that address (it prints "
     "'listening on HOST:PORT') and that --peer names that HOST:PORT"),
    ("max_cost", "a bid cost more than --max-cost: raise it, or leave it out"),
    ("below_cost", "a peer's price is above --max-cost: raise it, or leave it out"),
    ("deadline_too_short", "a peer needs more time than --deadline leaves: give a longer --deadline"),
    ("overloaded", "a peer is busy: retry shortly, or add other --peer addresses"),
    ("draining", "a peer is shutting down: retry with other --peer addresses"),
    ("constraint_violated", "a model's limits refused the task (batch, tokens, language; see above): "
     "send fewer rows or shorter texts, or ask other peers"),
)  # fmt: skip


def hint(error: AtomicError, capability: str, inputs: Mapping[str, torch.Tensor] | None = None) -> str:
    """What to try next after a failed auction, from what the peers answered."""
    if not isinstance(error, NoBidsError):
        return "the peers bid but none delivered in time: retry with a longer --deadline, or other peers"
    said = str(error)
    floats64 = inputs is not None and any(t.dtype == torch.float64 for t in inputs.values())
    if "bad_input_spec" in said and floats64:
        return "the inputs are float64 (numpy's default) and the models take float32: add --dtype float32"
    found = [text.format(capability=capability) for key, text in _HINTS if key in said]
    if found:
        return "; ".join(found[:3])
    return (
        f"check that the peers are running and serve {capability!r}, that the inputs match what "
        "their models take, and that --deadline and --max-cost leave room for their terms"
    )


def render_failure(
    error: AtomicError, capability: str, as_json: bool, inputs: Mapping[str, torch.Tensor] | None = None
) -> str:
    if as_json:
        document = {
            "ok": False,
            "error": type(error).__name__,
            "code": status_name(error),
            "message": str(error),
            "hint": hint(error, capability, inputs),
        }
        return json.dumps(document, indent=2)
    return f"atomic run: {error}\nwhat next: {hint(error, capability, inputs)}"
