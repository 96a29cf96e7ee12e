"""Which bids a caller will take, beyond the evaluator's own rules: a model, peers, fallback.

How this works
--------------
A :class:`Selection` travels with a request (``Requester.run(..., selection=...)``,
``Requester.generate(..., selection=...)``) and acts in three places, each the one that already
does that job (docs/architecture.md section 7):

- ``model_id`` goes into the TaskSpec, so peers that do not host that model decline with a reason
  (the seller's screening), and the evaluator excludes any bid on another model;
- ``exclude`` and ``prefer`` name peers by id (hex, or a prefix of at least 8 hex digits) or by
  address. The evaluator excludes a bid from an excluded peer with kind ``selection`` (the bid
  log and ``atomic bids`` show it) and, after scoring and the floor, moves bids from preferred
  peers to the front, in the order given, keeping the evaluator's order within each group;
- ``fallback=False`` tries the winner alone: when it fails, the request fails.

This is what OpenRouter's provider routing offers (``order``, ``ignore``, ``allow_fallbacks``),
on a market: the auction still runs and is logged; the caller only narrows and orders it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from atomic_p2p.errors import ConfigError

MIN_PEER_PREFIX = 8  # hex digits: what `atomic peers` and `atomic bids` print for a peer id
MAX_PEERS = 64  # peers one selection may name, in prefer and exclude each
_HEX = re.compile(r"^[0-9a-f]+$")


def _peer_names(name: str, values: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ConfigError(f"{name} is a list of peer ids or addresses")
    if len(values) > MAX_PEERS:
        raise ConfigError(f"{name} names at most {MAX_PEERS} peers, got {len(values)}")
    names = []
    for value in values:
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ConfigError(f"{name} holds peer ids (hex) or host:port addresses of at most 256 characters")
        if ":" not in value and not (_HEX.match(value.lower()) and len(value) >= MIN_PEER_PREFIX):
            raise ConfigError(
                f"{name}: {value[:64]!r} is neither a host:port address nor a peer id "
                f"(hex, at least {MIN_PEER_PREFIX} digits)"
            )
        names.append(value if ":" in value else value.lower())
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class Selection:
    """A caller's narrowing of one request's auction (see the module docstring)."""

    model_id: str = ""  # only bids on this model ("": any model for the capability)
    prefer: tuple[str, ...] = ()  # peers ranked ahead of the rest, in this order
    exclude: tuple[str, ...] = ()  # peers whose bids are excluded
    fallback: bool = True  # False: only the winner is tried

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, str) or len(self.model_id) > 256:
            raise ConfigError("model_id is a string of at most 256 characters")
        object.__setattr__(self, "prefer", _peer_names("prefer", self.prefer))
        object.__setattr__(self, "exclude", _peer_names("exclude", self.exclude))
        if not isinstance(self.fallback, bool):
            raise ConfigError("fallback is true or false")

    @property
    def narrows(self) -> bool:
        """Whether it rules any bid out or reorders any (the default selection does neither)."""
        return bool(self.model_id or self.prefer or self.exclude)

    def problem(self, bid: object) -> str | None:
        """Why ``bid`` is ruled out by this selection, or None."""
        model = str(getattr(bid, "model_id", ""))
        if self.model_id and model != self.model_id:
            return f"model {model[:64]!r} is not the {self.model_id!r} asked for"
        if self.exclude and _position(self.exclude, bid) is not None:
            return "the requester excluded this peer"
        return None

    def preference(self, bid: object) -> int:
        """The bid's place among the preferred peers; ``len(prefer)`` for any other peer."""
        position = _position(self.prefer, bid) if self.prefer else None
        return len(self.prefer) if position is None else position


def _position(names: Sequence[str], bid: object) -> int | None:
    peer = getattr(bid, "peer_id", None)
    peer_hex = "" if peer is None else str(peer)
    address = str(getattr(bid, "address", ""))
    for index, name in enumerate(names):
        if name == address or (peer_hex and ":" not in name and peer_hex.startswith(name)):
            return index
    return None


ANY = Selection()
