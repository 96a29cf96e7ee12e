"""``atomic generate``: auction a prompt (text, or token ids) and stream what is generated as it arrives."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from atomic_p2p.cli.arguments import (
    add_peer_arguments,
    add_weights_argument,
    non_negative,
    positive,
    weights_of,
)
from atomic_p2p.cli.exits import ExitCode
from atomic_p2p.cli.run import load_identity
from atomic_p2p.errors import AuctionError, ConfigError

if TYPE_CHECKING:
    from atomic_p2p.identity import Identity
    from atomic_p2p.requester import GenerationResult

MAX_PROMPT_IDS = 100_000  # a prompt typed on a command line: anything longer is a mistake


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="auction a prompt and stream the generated tokens",
        description="Ask every --peer for a bid on a prompt (text, each peer tokenising it with its own "
        "tokenizer, or --prompt-ids), stream what the best bid generates (continuing on the runner-up if "
        "it fails) and print which peer produced which part.",
    )
    parser.add_argument("prompt", nargs="?", help='the prompt text, e.g. "Once upon a time"')
    add_peer_arguments(parser, "--peer")
    parser.add_argument("--capability", required=True, help='what to run, e.g. "generate/count"')
    parser.add_argument(
        "--prompt-ids", metavar="IDS", help="a prompt of token ids instead of text, comma-separated: 1,2,3"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)"
    )
    parser.add_argument(
        "--deadline", type=positive, default=10.0, metavar="S", help="seconds in all (default 10)"
    )
    add_weights_argument(parser)
    parser.add_argument("--max-cost", type=non_negative, metavar="COST", help="exclude dearer bids")
    parser.add_argument("--key", type=Path, metavar="PATH", help="signing key (default: the keygen path)")
    parser.set_defaults(handler=handle)


def parse_prompt(text: str) -> list[int]:
    """``"1, 2,3"`` -> ``[1, 2, 3]``; anything else is a ConfigError naming the bad part."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > MAX_PROMPT_IDS:
        raise ConfigError(f"a prompt of at most {MAX_PROMPT_IDS} token ids, got {len(parts)}")
    try:
        ids = [int(part) for part in parts if part]
    except ValueError:
        raise ConfigError(f"--prompt-ids takes comma-separated integers, got {text[:64]!r}") from None
    if not ids:
        raise ConfigError("--prompt-ids needs at least one token id")
    return ids


def choose_prompt(args: argparse.Namespace) -> str | list[int]:
    """The text prompt or the --prompt-ids, exactly one of them."""
    if (args.prompt is None) == (args.prompt_ids is None):
        raise ConfigError('give a prompt text or --prompt-ids, one of them: atomic generate ... "prompt"')
    if args.prompt_ids is not None:
        return parse_prompt(args.prompt_ids)
    if not args.prompt:
        raise ConfigError("the prompt text is empty")
    return str(args.prompt)


async def stream(
    args: argparse.Namespace, prompt: str | list[int], identity: Identity, out: TextIO
) -> GenerationResult:
    from atomic_p2p.requester import Requester

    async with Requester(args.peers, identity, insecure=args.insecure) as requester:
        generation = requester.generate(
            args.capability,
            prompt,
            max_tokens=args.max_tokens,
            deadline_s=args.deadline,
            weights=args.weights,
            max_cost=args.max_cost,
        )
        async with generation:
            async for chunk in generation:
                if isinstance(prompt, str):
                    out.write(chunk.text)
                else:
                    out.write(" ".join(str(token) for token in chunk.tokens) + " ")
                out.flush()
        out.write("\n")
        return generation.result


def render(result: GenerationResult, by_text: bool = False) -> str:
    size = f"{len(result.text)} characters" if by_text else f"{len(result.tokens)} tokens"
    lines = [f"{size}, price {result.price:.6g}"]
    for part in result.parts:
        end = part.start + len(part.tokens)
        state = "verified" if part.verified else "UNVERIFIED (the peer failed)"
        bid = part.bid
        what = f"text {_clip(part.text)}" if by_text else f"tokens [{part.start}, {end})"
        lines.append(f"  {what} from {bid.address} ({bid.peer_id.short}, {bid.model_id}): {state}")
    return "\n".join(lines)


def _clip(text: str, limit: int = 40) -> str:
    """A part's text for the summary: quoted, and cut (a peer's output is not ours to print in full)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def handle(args: argparse.Namespace) -> ExitCode:
    prompt = choose_prompt(args)
    args.weights = weights_of(args)
    identity = load_identity(args.key)
    try:
        result = asyncio.run(stream(args, prompt, identity, sys.stdout))
    except AuctionError as error:
        from atomic_p2p.cli.report import hint

        print(f"\natomic generate: {error}\nwhat next: {hint(error, args.capability)}", file=sys.stderr)
        return ExitCode.FAILED
    print(render(result, by_text=isinstance(prompt, str)), file=sys.stderr)
    return ExitCode.OK
