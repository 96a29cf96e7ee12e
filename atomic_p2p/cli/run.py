"""``atomic run``: auction one task (tensors from ``--input``, or ``--text`` strings) among the given
peers, print the auction and the result."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from atomic_p2p.cli import observability
from atomic_p2p.cli.arguments import (
    add_peer_arguments,
    add_weights_argument,
    non_negative,
    positive,
    weights_of,
)
from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.cli.keygen import default_key_path, default_store_path
from atomic_p2p.errors import AuctionError, ConfigError
from atomic_p2p.identity import Identity

if TYPE_CHECKING:
    import torch

    from atomic_p2p.requester import GraphResult, Result


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="auction one task among peers and print the result",
        description="Ask every --peer for a bid on one task, run it on the best bid (falling back to "
        "runner-ups on failure) and print the bids, the winner, the price and the result.",
    )
    _add_auction_arguments(parser)
    _add_io_arguments(parser)
    observability.add_arguments(parser)
    parser.set_defaults(handler=handle)


def _add_auction_arguments(parser: argparse.ArgumentParser) -> None:
    add_peer_arguments(parser, "--peer")
    parser.add_argument("--capability", required=True, help='what to run, e.g. "classify/digits"')
    parser.add_argument(
        "--deadline",
        type=positive,
        default=2.0,
        metavar="S",
        help="seconds for the whole auction, fallbacks included (default: 2)",
    )
    add_weights_argument(parser)
    parser.add_argument("--max-cost", type=non_negative, metavar="COST", help="exclude dearer bids")
    parser.add_argument(
        "--no-preview", action="store_true", help="do not send the inputs with the call for bids"
    )
    parser.add_argument(
        "--key",
        type=Path,
        metavar="PATH",
        help=f"signing key (default: {default_key_path()} if it exists, else a fresh one)",
    )


def _add_io_arguments(parser: argparse.ArgumentParser) -> None:
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument(
        "--input",
        type=Path,
        metavar="FILE",
        help=".pt (a tensor or a dict of name -> tensor) or .npy",
    )
    task.add_argument(
        "--text",
        dest="texts",
        action="append",
        metavar="TEXT",
        help="a text input, one example (repeat for a batch); each peer tokenises it with its own tokenizer",
    )
    parser.add_argument(
        "--language", default="", metavar="TAG", help='the language of the texts, e.g. "en" (peers check it)'
    )
    parser.add_argument(
        "--input-name",
        default="x",
        metavar="NAME",
        help="name for an input file holding one bare tensor (default: x)",
    )
    parser.add_argument("--dtype", metavar="NAME", help="cast every input to this dtype first (e.g. float32)")
    parser.add_argument("--output", type=Path, metavar="FILE", help="save the outputs (.pt or .npy)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a report")
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DB",
        help=f"SQLite store for the bid log, decisions, profiles and ledger (default {default_store_path()})",
    )
    parser.add_argument("--no-store", action="store_true", help="keep nothing of this auction")
    parser.add_argument(
        "--explore",
        action="store_true",
        help="explore with the default evaluator (a UCB bonus for little-known peers) instead of ranking greedily",
    )


def load_identity(path: Path | None) -> Identity:
    if path is None:
        path = default_key_path()
        if not path.exists():
            print(
                "note: no key file; signing with a throwaway key (create one with: atomic keygen)",
                file=sys.stderr,
            )
            return Identity.generate()
    if not path.exists():
        raise ConfigError(f"key file {path} does not exist (create one with: atomic keygen --out {path})")
    return Identity.load(path)


async def _auction(
    args: argparse.Namespace, inputs: dict[str, torch.Tensor] | None, identity: Identity
) -> Result | GraphResult:
    """Tensors go through :meth:`Requester.submit`, which shards a batch larger than the peers
    take (as the SDK does); texts (and a --language) through :meth:`Requester.run`."""
    from atomic_p2p.requester import Request, Requester
    from atomic_p2p.requester.evaluator import EvaluatorConfig

    store = None if args.no_store else (args.store or default_store_path())
    evaluator = EvaluatorConfig() if args.explore else EvaluatorConfig.greedy()
    async with Requester(
        args.peers, identity, store=store, evaluator=evaluator, insecure=args.insecure
    ) as requester:
        if inputs is not None and not args.language:
            return await requester.submit(
                Request.single(args.capability, inputs),
                deadline_s=args.deadline,
                weights=args.weights,
                max_cost=args.max_cost,
                preview=not args.no_preview,
            )
        return await requester.run(
            args.capability,
            inputs,
            text=args.texts,
            language=args.language,
            deadline_s=args.deadline,
            weights=args.weights,
            max_cost=args.max_cost,
            preview=not args.no_preview,
        )


def handle(args: argparse.Namespace) -> ExitCode:
    # torch and the SDK load here rather than at import, so `atomic --help` and `atomic keygen`
    # do not pay the seconds torch takes to import.
    from atomic_p2p.cli import report, tensor_files
    from atomic_p2p.requester import Result

    if args.output is not None:
        tensor_files.check_suffix(args.output, "output file")  # fail before the auction, not after
    args.weights = weights_of(args)
    inputs = None if args.texts else tensor_files.load_inputs(args.input, args.input_name, args.dtype)
    identity = load_identity(args.key)
    metrics_server = observability.start_metrics(args)
    try:
        result = asyncio.run(_auction(args, inputs, identity))
    except AuctionError as error:
        print(
            report.render_failure(error, args.capability, args.json, inputs),
            file=sys.stdout if args.json else sys.stderr,
        )
        return ExitCode.FAILED
    finally:
        if metrics_server is not None:
            metrics_server.close()
    if args.output is not None:
        tensor_files.save_outputs(result.outputs, args.output)
    if isinstance(result, Result):
        shown = (
            report.render_json(result, args.weights)
            if args.json
            else report.render_text(result, args.weights)
        )
    else:
        shown = (report.render_graph_json if args.json else report.render_graph_text)(result, args.weights)
    print(shown)
    return ExitCode.OK
