"""``atomic report DECISION_ID SCORE``: say how good a delivered result turned out (a label, a
rating) so that the requester's profile of the peer that delivered it learns from it.

The id is what ``atomic run`` and ``atomic bids`` print, ``REQUEST/TASK`` (``1cbabd9f/task-0``;
any unique prefix of the request id's hex). The outcome goes through the SDK's
:meth:`Requester.report_outcome` on a requester over the same store: the profile learns (``atomic
profile`` shows it), the store keeps it, and the peer gets a signed OUTCOME notice (it attributes
the notice when the key is the one that ordered the task). Each task takes one outcome.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path

from atomic_p2p.cli.arguments import unit_interval
from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.cli.keygen import default_key_path
from atomic_p2p.cli.stored import add_store_argument, open_store
from atomic_p2p.cli.tables import number
from atomic_p2p.errors import ConfigError

ID_CHARS = 200  # an id given on the command line is quoted back at most this long


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="report how good a delivered result was, so the peer's profile learns",
        description="Feed an outcome (0 = wrong .. 1 = right) for a task `atomic run` bought back into "
        "the requester's store: the profile of the peer that delivered it learns, and the peer hears it.",
    )
    parser.add_argument(
        "task", metavar="DECISION_ID", help="REQUEST/TASK as `atomic run` or `atomic bids` print it"
    )
    parser.add_argument("score", type=unit_interval, metavar="SCORE", help="the outcome, in [0, 1]")
    add_store_argument(parser)
    parser.add_argument(
        "--key", type=Path, metavar="PATH", help=f"signing key (default: {default_key_path()} if it exists)"
    )
    parser.set_defaults(handler=handle)


@dataclass(frozen=True, slots=True)
class Delivery:
    task_ref: str  # full request id hex / task id: what Requester.report_outcome takes
    peer: str
    model_id: str
    capability: str
    address: str


def resolve(store_path: Path | None, given: str) -> tuple[Path, Delivery]:
    """The delivered task ``given`` names in the store, or a ConfigError that says what to do."""
    shown = repr(given[:ID_CHARS])
    request, _, task_id = given.strip().lower().partition("/")
    if not task_id or not request or any(c not in "0123456789abcdef" for c in request):
        raise ConfigError(f"{shown} is not a decision id; give REQUEST/TASK as `atomic bids` prints it")
    with open_store(store_path) as store:
        matches = store.decisions_matching(request, task_id, limit=2)
        if not matches:
            raise ConfigError(f"no decision {shown} in {store.path}; `atomic bids` lists the recent ones")
        if len({str(m.request_id) for m in matches}) > 1:
            raise ConfigError(f"{shown} matches several requests; give more digits of the request id")
        request_id = str(matches[0].request_id)
        peer = store.charged_peer(request_id, task_id)
        if peer is None:
            raise ConfigError(
                f"task {shown} was never delivered (nothing was paid for it): no outcome to report"
            )
        (bid, *_) = [b for b in reversed(store.bids_for(request_id, task_id)) if b.peer == peer]
        delivery = Delivery(f"{request_id}/{task_id}", peer, bid.model_id, bid.capability, bid.address)
        return store.path, delivery


async def report(
    path: Path, delivery: Delivery, score: float, key: Path | None
) -> tuple[float | None, float]:
    """Report through the SDK; the delivering peer's posterior mean before and after."""
    from atomic_p2p.cli.run import load_identity
    from atomic_p2p.requester import Requester
    from atomic_p2p.requester.profiler import ProfileKey

    async with Requester([delivery.address], load_identity(key), store=path) as requester:
        key_of = ProfileKey(delivery.peer, delivery.model_id, delivery.capability)
        known = requester.memory.profiles.get(key_of)
        before = known.quality.mean if known is not None else None
        await requester.report_outcome(delivery.task_ref, score)
        return before, requester.memory.profiles[key_of].quality.mean


def handle(args: argparse.Namespace) -> ExitCode:
    path, delivery = resolve(args.store, args.task)
    before, after = asyncio.run(report(path, delivery, args.score, args.key))
    print(
        f"outcome {args.score:g} for {delivery.task_ref} from {delivery.peer[:8]} ({delivery.model_id}) "
        f"at {delivery.address}: expected accuracy {number(before)} -> {number(after)}"
    )
    return ExitCode.OK
