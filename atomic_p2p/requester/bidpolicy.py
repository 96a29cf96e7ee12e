"""The bid manager's rules, pure: whom to ask, how long, which bids to reuse (docs/architecture.md section 6).

How this works
--------------
- **Pre-filtering** (:func:`prefilter`): the one place that decides who is asked, given the
  candidates discovery found (:mod:`.evaluator` shows where it sits among the places a peer is
  chosen). With more than ``top_m`` of them, those with a profile are ranked by their prior
  (the best posterior mean of outcome quality over their models for the capability); the top
  ``top_m`` are asked, topped up with unprofiled candidates when fewer are known. On top of
  that ``ceil(exploration_share * top_m)`` more are drawn at random from the rest, so a peer
  the profile has written off, or one that just joined, still gets asked now and then.
- **tmax** (:class:`LatencyTracker`). Per peer, the smoothed answer time and its mean
  deviation, as TCP keeps them for its retransmission timeout (Jacobson/Karels, RFC 6298):
  ``srtt += (x - srtt) / 8``, ``rttvar += (|x - srtt| - rttvar) / 4``; the peer's own timeout
  is ``srtt + 4 * rttvar``. A round's ``tmax`` is the ``quantile`` (1.0: the largest) of the
  timeouts of the peers it asks, clamped to ``[floor, ceiling]``; a peer never timed counts as
  the ceiling. A peer still silent when the round stopped is observed at the time it was
  waited for, a lower bound on its real time, so silence pushes ``tmax`` back up.
- **Bid cache** (:class:`BidCache`). A peer may declare a bid reusable (``reusable_ttl_ms`` >
  0). Such bids are kept under (capability, input-shape bucket) per peer until the earlier of
  their TTL and their ``valid_until``, and dropped once the peer's gossip record ``seq``
  moves past the one it bid under. The peer quoted for exact input specs (names, dtypes,
  shapes), and checks them at Execute, so a lookup returns a bid only for the same specs.

Nothing here reads a clock or a socket: times are arguments, randomness is the caller's.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from atomic_p2p.errors import ConfigError
from atomic_p2p.identity import PeerId
from atomic_p2p.requester.profiler import Profile, ProfileKey
from atomic_p2p.requester.types import BidInfo

# The shape of a task's inputs as a peer saw it: (name, dtype, shape) per input, in order.
InputSpecs = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class BidPolicy:
    """How the requester solicits bids. Every rule can be switched off for a benchmark.

    - ``batching``: one RequestBids per peer carries every pending task for it (at most
      ``max_tasks_per_call``; the peers' default limit is 64). A round starts at once while
      fewer than ``rounds_in_flight`` run; past that, tasks wait and ride together in the next
      one, so batching grows with load. Off, every task gets its own round at once.
    - ``top_m`` (0: ask everyone) and ``exploration_share``: pre-filtering.
    - ``k_min`` (0: wait for every answer or ``tmax``) and ``grace_s``: early close.
    - ``adaptive_tmax``: once every task has an offer, stop at ``tmax``, from observed answer
      times within ``[tmax_floor_s, the requester's bid_timeout_s]``; off, wait for every
      answer up to ``bid_timeout_s``.
    - ``cache``: reuse bids peers declared reusable (at most ``cache_entries`` kept).
    - ``max_concurrent_requests``: requests past this many wait in the priority queue.
    """

    batching: bool = True
    max_tasks_per_call: int = 64
    rounds_in_flight: int = 4  # bench_batching: 47 tasks a round instead of 27, ~10% less CPU a bid each side
    top_m: int = 32
    exploration_share: float = 0.25
    k_min: int = 3
    grace_s: float = 0.1
    adaptive_tmax: bool = True
    tmax_floor_s: float = 0.25
    tmax_quantile: float = 1.0
    cache: bool = True
    cache_entries: int = 4096
    max_concurrent_requests: int = 64

    def __post_init__(self) -> None:
        for name in ("max_tasks_per_call", "rounds_in_flight", "cache_entries", "max_concurrent_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"BidPolicy.{name} must be >= 1")
        if self.top_m < 0 or self.k_min < 0:
            raise ConfigError("BidPolicy.top_m and k_min must be >= 0 (0 switches them off)")
        if not 0.0 <= self.exploration_share <= 1.0 or not 0.0 < self.tmax_quantile <= 1.0:
            raise ConfigError("exploration_share must lie in [0, 1] and tmax_quantile in (0, 1]")
        for name in ("grace_s", "tmax_floor_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"BidPolicy.{name} must be a finite number >= 0")

    @classmethod
    def plain(cls, **overrides: object) -> BidPolicy:
        """Every rule off: ask every candidate, one round per task, wait for all, no cache."""
        settings: dict[str, object] = {
            "batching": False,
            "top_m": 0,
            "k_min": 0,
            "adaptive_tmax": False,
            "cache": False,
        }
        settings.update(overrides)
        return cls(**settings)  # type: ignore[arg-type]


# --- pre-filtering --------------------------------------------------------------------------------


def peer_prior(profiles: Mapping[ProfileKey, Profile], peer: str, capability: str) -> float | None:
    """The best posterior mean of outcome quality over ``peer``'s models for ``capability``;
    None when the requester has observed nothing of it yet."""
    means = [
        profile.quality.mean
        for key, profile in profiles.items()
        if key.peer == peer and key.capability == capability and (profile.outcomes or profile.deliveries)
    ]
    return max(means, default=None)


@dataclass(frozen=True, slots=True)
class Prefiltered:
    """Whom to ask: the ``chosen`` addresses in order (top by prior, then explorers)."""

    chosen: tuple[str, ...]
    explorers: tuple[str, ...]
    skipped: tuple[str, ...]


def prefilter(
    candidates: Sequence[str],
    prior_of: Callable[[str], float | None],
    top_m: int,
    exploration_share: float,
    rng: random.Random,
) -> Prefiltered:
    """Pick the addresses to solicit (see the module docstring). ``prior_of`` gives an address's
    prior (None: not profiled); it is asked only when there are more than ``top_m`` candidates."""
    unique = list(dict.fromkeys(candidates))
    if top_m <= 0 or len(unique) <= top_m:
        return Prefiltered(tuple(unique), (), ())
    priors = {address: prior for address in unique if (prior := prior_of(address)) is not None}
    known = sorted((a for a in unique if a in priors), key=lambda a: -priors[a])  # stable on ties
    unknown = [a for a in unique if a not in priors]
    rng.shuffle(unknown)
    top = (known + unknown)[:top_m]
    rest = [a for a in unique if a not in top]
    explore = min(len(rest), math.ceil(exploration_share * top_m))
    explorers = rng.sample(rest, explore)
    chosen = set(top) | set(explorers)
    return Prefiltered(
        tuple(a for a in unique if a in chosen),
        tuple(explorers),
        tuple(a for a in unique if a not in chosen),
    )


# --- tmax -----------------------------------------------------------------------------------------

_SRTT_GAIN = 1 / 8
_RTTVAR_GAIN = 1 / 4
_RTO_DEVIATIONS = 4.0


@dataclass(frozen=True, slots=True)
class _Timing:
    srtt_ms: float
    rttvar_ms: float
    samples: int

    @property
    def timeout_ms(self) -> float:
        return self.srtt_ms + _RTO_DEVIATIONS * self.rttvar_ms


class LatencyTracker:
    """Answer times per peer address, and the ``tmax`` they call for (see the module docstring)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._timings: OrderedDict[str, _Timing] = OrderedDict()

    def observe(self, address: str, elapsed_ms: float) -> None:
        """``address`` answered after ``elapsed_ms``."""
        if not (math.isfinite(elapsed_ms) and elapsed_ms >= 0):
            return
        old = self._timings.pop(address, None)
        if old is None:
            timing = _Timing(elapsed_ms, elapsed_ms / 2, 1)
        else:
            deviation = abs(elapsed_ms - old.srtt_ms)
            timing = _Timing(
                old.srtt_ms + _SRTT_GAIN * (elapsed_ms - old.srtt_ms),
                old.rttvar_ms + _RTTVAR_GAIN * (deviation - old.rttvar_ms),
                old.samples + 1,
            )
        self._timings[address] = timing
        while len(self._timings) > self._capacity:
            self._timings.popitem(last=False)

    def silent(self, address: str, waited_ms: float) -> None:
        """``address`` had not answered after ``waited_ms``: at least that slow, this time."""
        known = self._timings.get(address)
        if known is None or waited_ms > known.srtt_ms:
            self.observe(address, waited_ms)

    def timeout_ms(self, address: str) -> float | None:
        timing = self._timings.get(address)
        return None if timing is None else timing.timeout_ms

    def tmax_s(
        self, addresses: Sequence[str], floor_s: float, ceiling_s: float, quantile: float = 1.0
    ) -> float:
        """The window for a round that asks ``addresses``, in seconds."""
        if not addresses:
            return ceiling_s
        timeouts = sorted(
            ceiling_s * 1000 if (t := self.timeout_ms(a)) is None else t for a in dict.fromkeys(addresses)
        )
        index = max(0, math.ceil(quantile * len(timeouts)) - 1)
        return min(ceiling_s, max(floor_s, timeouts[index] / 1000))


# --- the bid cache --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedBid:
    bid: BidInfo
    specs: InputSpecs
    expires_ms: int


@dataclass(slots=True)
class _Slot:
    """Cached bids for one (capability, bucket), one per peer (hex id)."""

    by_peer: dict[str, CachedBid] = field(default_factory=dict)


class BidCache:
    """Reusable bids by (capability, input-shape bucket); see the module docstring."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._slots: OrderedDict[tuple[str, str], _Slot] = OrderedDict()
        self._size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self._size

    def put(self, bid: BidInfo, capability: str, bucket: str, specs: InputSpecs, received_ms: int) -> bool:
        """Keep ``bid`` if its peer allows reuse; True when kept."""
        if bid.reusable_ttl_ms <= 0:
            return False
        expires = min(received_ms + bid.reusable_ttl_ms, bid.valid_until_ms)
        if expires <= received_ms:
            return False
        slot = self._slots.setdefault((capability, bucket), _Slot())
        self._slots.move_to_end((capability, bucket))
        if bid.peer_id.hex not in slot.by_peer:
            self._size += 1
        slot.by_peer[bid.peer_id.hex] = CachedBid(bid, specs, expires)
        self._evict()
        return True

    def get(
        self,
        capability: str,
        bucket: str,
        specs: InputSpecs,
        now_ms: int,
        seq_of: Callable[[PeerId], int | None] = lambda peer: None,
    ) -> list[BidInfo]:
        """Live cached bids for these inputs, one per peer. An entry past its time, or whose
        peer's record ``seq`` (``seq_of``; None: unknown) moved past the one it bid under, is
        dropped (a seq still behind the bid's is gossip lagging, not a change)."""
        slot = self._slots.get((capability, bucket))
        if slot is None:
            return []
        found: list[BidInfo] = []
        for peer, entry in list(slot.by_peer.items()):
            seq = seq_of(entry.bid.peer_id)
            if entry.expires_ms <= now_ms or (seq is not None and seq > entry.bid.record_seq):
                del slot.by_peer[peer]
                self._size -= 1
            elif entry.specs == specs:
                found.append(entry.bid)
        if not slot.by_peer:
            del self._slots[(capability, bucket)]
        return found

    def drop_peer(self, peer: PeerId) -> int:
        """Forget every bid of ``peer`` (it failed, or refused a reuse); returns how many."""
        dropped = 0
        for key, slot in list(self._slots.items()):
            if slot.by_peer.pop(peer.hex, None) is not None:
                dropped += 1
            if not slot.by_peer:
                del self._slots[key]
        self._size -= dropped
        return dropped

    def _evict(self) -> None:
        while self._size > self._capacity and self._slots:
            _, slot = self._slots.popitem(last=False)  # least recently filled first
            self._size -= len(slot.by_peer)


def rebind(bid: BidInfo, task_id: str, request_id: bytes) -> BidInfo:
    """A cached bid offered for a new task: orders for it name the new task and request ids
    (the peer checks the reuse against the bid it signed, which travels unchanged)."""
    return replace(bid, task_id=task_id, request_id=request_id, reused=True)
