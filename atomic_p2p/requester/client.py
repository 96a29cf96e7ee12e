"""The requester SDK's face: :class:`Requester` buys inference from peers through auctions.

Two ways in
-----------
- :meth:`Requester.run` buys one microtask: its inputs go to one capability, the best bid
  that delivers produces a :class:`~.types.Result`.
- :meth:`Requester.submit` buys a :class:`~.decomposer.Request`: one task, an explicit graph
  (a pipeline whose nodes take request inputs or other nodes' outputs), or a large batch that
  is sharded. It returns a :class:`~.graphrun.GraphResult`: the combined outputs, and per
  microtask its winner, price, rationale and attempts.

Both go through the same parts (docs/architecture.md sections 2, 6 to 8): the priority queue
(:mod:`.admission`) bounds how many requests run at once; the broker (:mod:`.broker`) prepares
each microtask and hands ready ones to the bid manager (:mod:`.bidmanager`: bid cache,
pre-filtering, one batched RequestBids per peer, adaptive ``tmax``, k_min plus grace); the
evaluator picks a winner with runner-ups; the executor falls back down the ranking within the
deadline; notices go out in the background; the profiles learn.

Every request ends in a result or an :class:`~atomic_p2p.errors.AuctionError`
(:class:`~atomic_p2p.errors.NoBidsError` when no usable bid came back) whose message says what
each peer said or how each attempt failed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import torch

from atomic_p2p import metrics
from atomic_p2p.channels import ChannelPool
from atomic_p2p.clock import SYSTEM_CLOCK, Clock
from atomic_p2p.errors import ConfigError, NoBidsError
from atomic_p2p.gossip import GossipConfig
from atomic_p2p.identity import Identity
from atomic_p2p.requester.admission import Priority, RequestQueue, parse_priority
from atomic_p2p.requester.auction import CallForBids, call_for_bids
from atomic_p2p.requester.bidmanager import BidManager
from atomic_p2p.requester.bidpolicy import BidPolicy
from atomic_p2p.requester.broker import Broker, Terms
from atomic_p2p.requester.decomposer import FromInput, Request, ShardPolicy, TaskGraph, decompose, parse_ref
from atomic_p2p.requester.discovery import Discovery
from atomic_p2p.requester.evaluator import Ask, EvaluatorConfig
from atomic_p2p.requester.execution import Executed, ExecutionPolicy, Executor, Success
from atomic_p2p.requester.feedback import FeedbackSender
from atomic_p2p.requester.generation import GeneratedTokens, Generation, GenerationResult, GenerationWalk
from atomic_p2p.requester.gradient import GradientMarket
from atomic_p2p.requester.graphrun import GraphResult, GraphRun
from atomic_p2p.requester.memory import MarketMemory
from atomic_p2p.requester.messages import ResultReceipt, TaskRef
from atomic_p2p.requester.ranking import Decision
from atomic_p2p.requester.selection import ANY, Selection
from atomic_p2p.requester.spotcheck import SpotCheckConfig
from atomic_p2p.requester.transport import GrpcTransport, Transport, WatchedTransport
from atomic_p2p.requester.types import Attempt, BidInfo, Result
from atomic_p2p.requester.weights import WeightsSpec, resolve_weights
from atomic_p2p.tls import parse_address

PROMPT_NAME = "prompt"  # the input name of a generation task (generation models take it)
TASK_ID = "task-0"  # the first task id a requester uses; later ones count up


def _check_run_arguments(
    capability: str,
    inputs: Mapping[str, torch.Tensor],
    deadline_s: float,
    weights: WeightsSpec,
    max_cost: float | None,
    *,
    allow_empty: bool = False,
) -> None:
    """Fail on bad arguments before any network traffic."""
    if not isinstance(capability, str) or not capability:
        raise ConfigError("capability must be a non-empty string")
    _check_terms(deadline_s, weights, max_cost)
    if not isinstance(inputs, Mapping) or not (inputs or allow_empty):
        raise ConfigError("inputs must be a non-empty mapping of name -> torch.Tensor")
    for name, tensor in inputs.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"input names must be non-empty strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"input {name!r} is a {type(tensor).__name__}, not a torch.Tensor")


def _check_text(text: Sequence[str] | None, inputs: Mapping[str, torch.Tensor] | None) -> tuple[str, ...]:
    """The texts of a text task (one string per example); () for a tensor task."""
    if text is None:
        return ()
    if inputs:
        raise ConfigError("a task carries inputs or text, not both")
    if isinstance(text, str):
        raise ConfigError('text is a list of strings, one per example, e.g. text=["a review"]')
    texts = tuple(text)
    if not texts or not all(isinstance(item, str) for item in texts):
        raise ConfigError("text must be a non-empty list of strings")
    return texts


def _check_prompt(prompt_ids: str | torch.Tensor | Sequence[int], max_tokens: int) -> str | torch.Tensor:
    """A text prompt as it is, else the prompt as int64[1, T] token ids (a sequence or a 1-D or
    [1, T] integer tensor)."""
    if not (isinstance(max_tokens, int) and max_tokens > 0):
        raise ConfigError(f"max_tokens is a positive integer, got {max_tokens!r}")
    if isinstance(prompt_ids, str):
        if not prompt_ids:
            raise ConfigError("a text prompt needs at least one character")
        return prompt_ids
    try:
        prompt = torch.as_tensor(prompt_ids)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"a prompt is a sequence of token ids: {exc}") from None
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    if prompt.dtype not in (torch.int64, torch.int32) or prompt.dim() != 2 or prompt.shape[0] != 1:
        raise ConfigError(
            f"a prompt is token ids, int64[T] or [1, T], got {prompt.dtype}{list(prompt.shape)}"
        )
    if prompt.shape[1] < 1:
        raise ConfigError("a prompt needs at least one token")
    return prompt.to(torch.int64)


def _check_terms(deadline_s: float, weights: WeightsSpec, max_cost: float | None) -> None:
    _check_number("deadline_s", deadline_s, positive=True)
    _check_number("max_cost", max_cost, positive=False)
    resolve_weights(weights)


def _check_number(name: str, value: float | None, *, positive: bool) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a finite {'positive' if positive else 'non-negative'} number")


class Requester:
    """Buys model inference from peers through sealed-bid auctions.

    Contract: create it anywhere, use it inside one event loop, close it (``async with`` does)
    to close its channels. Concurrent :meth:`run` and :meth:`submit` calls share the channels,
    the bid manager (their tasks ride the same RequestBids rounds) and the priority queue.
    ``identity`` signs every call for bids, order and notice; without one an ephemeral key is
    generated. ``bids`` sets the bid manager's rules (:class:`BidPolicy`); ``shard`` when a
    request's batch is split (:class:`ShardPolicy`; by default only when no candidate accepts it
    whole). ``clock`` is where every deadline, timing, timeout and timestamp is read and every
    timed wait is kept (:mod:`atomic_p2p.clock`; the system clock by default, a ``FakeClock``
    in tests). ``transport`` carries the market calls (:class:`~.transport.Transport`; gRPC over
    the requester's channels by default, :class:`atomic_p2p.testing.InMemoryNetwork` in tests);
    a call through it that finds a peer unreachable makes that peer a suspect at once
    (:meth:`.discovery.Discovery.suspect`). ``durable`` (default True): with a ``store``,
    :meth:`run`, :meth:`submit` and a generation's final result return only once the result's
    decision and bids, payment and profile update are committed (docs/store.md); False returns
    sooner and leaves them to the store's writer (a kill within milliseconds may lose them).
    ``spot_checks`` (:class:`~.spotcheck.SpotCheckConfig`) runs a share of tasks on a second peer
    as well and learns from the agreement of the two answers (off by default).

    Every channel is TLS pinned to a certificate bound to the peer id (docs/security.md): an
    address ``PEERID@host:port`` in ``peers`` or ``bootstrap`` must prove that peer id; a plain
    ``host:port`` is trusted on first use (logged) unless a gossip record claims it. Peers that
    serve plaintext are refused unless ``insecure=True`` (debugging).
    """

    def __init__(
        self,
        peers: Sequence[str] = (),
        identity: Identity | None = None,
        *,
        bootstrap: Sequence[str] = (),
        gossip: GossipConfig | None = None,
        store: str | Path | None = None,
        evaluator: EvaluatorConfig | None = None,
        seed: int | None = None,
        bid_timeout_s: float = 1.0,
        bid_share: float = 0.5,
        execution: ExecutionPolicy | None = None,
        feedback_timeout_s: float = 2.0,
        bids: BidPolicy | None = None,
        shard: ShardPolicy | None = None,
        clock: Clock | None = None,
        transport: Transport | None = None,
        insecure: bool = False,
        durable: bool = True,
        spot_checks: SpotCheckConfig | None = None,
    ) -> None:
        for name, addresses in (("peers", peers), ("bootstrap", bootstrap)):
            if isinstance(addresses, str) or not all(isinstance(a, str) and a for a in addresses):
                raise ConfigError(f"{name} must be a sequence of 'host:port' strings")
            for address in addresses:
                parse_address(address)  # 'PEERID@host:port' names the peer that must answer there
        if not peers and not bootstrap:
            raise ConfigError(
                "give peers=[...] (addresses to ask) or bootstrap=[...] (gossip seeds), or both"
            )
        _check_number("bid_timeout_s", bid_timeout_s, positive=True)
        if not 0 < bid_share < 1:
            raise ConfigError("bid_share must lie strictly between 0 and 1")
        self.peers = tuple(dict.fromkeys(peers))  # keep order, drop duplicates
        self.durable = durable
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.identity = identity or Identity.generate()
        self.policy = bids or BidPolicy()
        self._shard = shard or ShardPolicy()
        self._bid_timeout_s = bid_timeout_s
        self._bid_share = bid_share
        self._pool = ChannelPool(allow_plaintext=insecure)
        self.discovery = Discovery(self.identity, self.peers, bootstrap, self._pool, gossip, self.clock)
        # Every call that finds a peer unreachable makes it a suspect at once (Discovery.suspect).
        self._transport: Transport = WatchedTransport(
            transport if transport is not None else GrpcTransport(self._pool, self.clock),
            self.discovery.suspect,
        )
        self._feedback = FeedbackSender(
            self._transport,
            self.identity,
            feedback_timeout_s,
            self.clock,
            observe=lambda bid, parameters: self.memory.observe_strategy(bid, parameters),
        )
        memory = MarketMemory.open(store, evaluator, seed, clock=self.clock)
        self._execution = execution or ExecutionPolicy()
        self.bids = BidManager(
            self._transport,
            self.identity,
            self.policy,
            bid_timeout_s=bid_timeout_s,
            profiles=lambda: self.memory.profiles,
            seq_of=self.discovery.version,
            clock=self.clock,
            rng=memory.rng,
        )
        self._broker = Broker(
            self.discovery,
            self.bids,
            memory,
            Executor(self._transport, self.identity, self._execution, self.clock),
            self._feedback,
            bid_timeout_s=bid_timeout_s,
            bid_share=bid_share,
            clock=self.clock,
            spot_checks=spot_checks,
        )
        self.queue = RequestQueue(self.policy.max_concurrent_requests, clock=self.clock)
        self._task_numbers = itertools.count()
        metrics.watch(self, metrics.requester_reading)

    @property
    def memory(self) -> MarketMemory:
        """What this requester has learned (profiles, shares, load) and where it is kept."""
        return self._broker.memory

    @memory.setter
    def memory(self, memory: MarketMemory) -> None:
        self._broker.memory = memory

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Join the gossip when bootstrap addresses were given (``async with`` calls this)."""
        await self.discovery.start()

    async def wait_for_peers(
        self, capability: str, count: int = 1, timeout: float = 10.0, batch: int = 1
    ) -> bool:
        """Wait until gossip (or the fixed peers) offers ``count`` candidates for ``capability``."""
        await self.start()
        return await self.discovery.wait_for(capability, batch, count, timeout)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Let pending notices finish (briefly), leave the gossip, then close every channel."""
        metrics.unwatch(self)
        await self.bids.close()
        await self._feedback.drain()
        await self.discovery.stop()
        await self._pool.close()
        await self.clock.run_blocking(self.memory.close)  # flushes the store's last batch

    def gradient_market(self, capability: str, *, batch: int = 1, **options: Any) -> GradientMarket:
        """A :class:`~atomic_p2p.requester.gradient.GradientMarket` (docs/gradient.md, seller-side)
        over this requester's candidates for ``capability`` now (fixed peers, then live gossip
        candidates that accept ``batch``): it signs with this requester's identity, shares its
        channels and records every payment in its store. ``options`` are GradientMarket's
        (``loss_fn``, ``shift_mode``, ``k``, ``train_outputs``, ``timeout_s``, ``input_name``).
        The candidate list is fixed when it is made: make another to take in newcomers.
        """
        addresses = self.discovery.candidates(capability, batch)
        if not addresses:
            raise NoBidsError(
                f"no candidate offers {capability!r} yet; pass peers=[...] or wait_for_peers() first"
            )
        return GradientMarket(
            self.identity,
            addresses,
            capability=capability,
            store=self.memory.store,
            transport=self._transport,
            clock=self.clock,
            **options,
        )

    async def run(
        self,
        capability: str,
        inputs: Mapping[str, torch.Tensor] | None = None,
        *,
        text: Sequence[str] | None = None,
        language: str = "",
        deadline_s: float = 2.0,
        weights: WeightsSpec = None,
        max_cost: float | None = None,
        preview: bool = True,
        priority: Priority | str | int = Priority.NORMAL,
        selection: Selection | None = None,
    ) -> Result:
        """Auction one task and return the verified result of the best bid that delivers.

        The task carries ``inputs`` (tensors by name) or ``text``: one string per example, which
        each peer tokenises with its own tokenizer (``run("classify/sentiment", text=["great",
        "awful"])``); peers with a token limit their tokenizer counts past decline. ``language``
        (a BCP 47 tag such as "en") declares the texts' language: models whose
        ``supported_languages`` lack it decline.

        ``weights`` is "speed", "accuracy", "balanced" (None), or a mapping of the components
        ``accuracy``, ``latency`` and ``cost`` to non-negative weights. ``max_cost`` excludes bids
        whose cost (for the whole task, every example) is higher. ``preview`` sends small inputs
        with the call for bids so peers can judge them.
        ``priority`` ("high", "normal", "low") orders requests that wait for a slot.
        ``selection`` narrows the auction to a model, excludes or prefers peers, or turns
        fallback off (:class:`~.selection.Selection`).
        Raises :class:`NoBidsError` or :class:`AuctionError`; bad arguments raise ConfigError.
        """
        texts = _check_text(text, inputs)
        tensors = {} if inputs is None else inputs
        _check_run_arguments(capability, tensors, deadline_s, weights, max_cost, allow_empty=bool(texts))
        started = self.clock.monotonic()
        terms = self._terms(deadline_s, weights, max_cost, priority, preview, selection)
        async with self.queue.slot(parse_priority(priority), terms.deadline):
            task_id = f"task-{next(self._task_numbers)}"
            prepared = await self._broker.prepare(task_id, capability, tensors, terms, texts, language)
            soliciting = self.clock.monotonic()
            (offers,) = await self._broker.offers([prepared], terms, deadline_s)
            bids_ms = (self.clock.monotonic() - soliciting) * 1000
            result = await self._broker.settle(prepared, offers, terms, started=started, bids_ms=bids_ms)
        await self._acknowledge()
        return result

    async def _acknowledge(self) -> None:
        """With ``durable`` (the default) and a store, wait until what a returned result stands
        for (its decision and bids, its payment, the profile update) is committed: a kill after
        the return loses none of it (docs/store.md; the wait costs one group commit)."""
        if self.durable:
            await self.memory.commit()

    def generate(
        self,
        capability: str,
        prompt_ids: str | torch.Tensor | Sequence[int],
        *,
        max_tokens: int,
        deadline_s: float = 10.0,
        weights: WeightsSpec = None,
        max_cost: float | None = None,
        priority: Priority | str | int = Priority.NORMAL,
        selection: Selection | None = None,
    ) -> Generation:
        """Auction a prompt (token ids) and stream the generated tokens as peers produce them::

            generation = requester.generate("generate/count", [1, 2, 3], max_tokens=16)
            async for chunk in generation:
                print(chunk.tokens, chunk.peer_id.short)
            generation.result.tokens, generation.result.parts

        If the peer generating fails mid-stream, the runner-up continues after the tokens so far
        with the budget left, inside ``deadline_s``; the result says which peer produced which
        part and holds each part's verified receipt (:mod:`.generation`).

        A text prompt (a ``str``) is tokenised by each peer with its own tokenizer; chunks and
        parts then carry text, a runner-up continues from the text so far, and
        ``generation.result.text`` is the whole generated text. ``selection`` narrows the
        auction as in :meth:`run` (with ``fallback=False`` a failed winner fails the generation)."""
        prompt = _check_prompt(prompt_ids, max_tokens)
        _check_terms(deadline_s, weights, max_cost)
        terms = self._terms(deadline_s, weights, max_cost, priority, False, selection)
        return Generation(self._generate(capability, prompt, max_tokens, terms, deadline_s))

    async def _generate(
        self, capability: str, prompt: str | torch.Tensor, max_tokens: int, terms: Terms, deadline_s: float
    ) -> AsyncGenerator[GeneratedTokens | GenerationResult, None]:
        async with self.queue.slot(parse_priority(terms.priority), terms.deadline):
            task_id = f"task-{next(self._task_numbers)}"
            if isinstance(prompt, str):
                prepared = await self._broker.prepare(task_id, capability, {}, terms, (prompt,))
            else:
                prepared = await self._broker.prepare(task_id, capability, {PROMPT_NAME: prompt}, terms)
            (offers,) = await self._broker.offers([prepared], terms, deadline_s)
            ask, decision = self._broker.rank(prepared, offers, terms)

            def learn(attempt: Attempt) -> None:  # a failed attempt counts against its peer at once
                if not attempt.ok:
                    self.memory.failed(attempt.bid, ask)

            walk = GenerationWalk(self._transport, self.identity, self._execution, self.clock, learn)
            ranked = [scored.item for scored in decision.ranked]
            if not terms.selection.fallback:
                ranked = ranked[:1]
            steps = walk.run(
                offers.request_id, task_id, capability, ranked, prepared.payload, max_tokens, terms.deadline
            )
            async with aclosing(steps):
                async for step in steps:
                    if isinstance(step, GenerationResult):
                        self._generated(offers.request_id, ask, decision, step)
                        await self._acknowledge()
                    yield step

    def _generated(
        self, request_id: bytes, ask: Ask, decision: Decision[BidInfo], result: GenerationResult
    ) -> None:
        """Learn from a finished generation as from a delivered task: the last (verified) part's
        peer delivered, every peer asked hears whether it won or lost."""
        last, final = result.parts[-1], result.attempts[-1]
        if last.receipt is None:  # never: a generation ends only on a verified part
            return
        self.memory.delivered(
            last.bid.request_id or request_id, last.bid, ask, final.elapsed_ms, result.price
        )
        receipt = ResultReceipt({}, last.cost, final.elapsed_ms)
        executed = Executed(result.attempts, Success(last.bid, receipt, last.receipt), untried=0)
        self._feedback.send(request_id, decision, executed)

    async def submit(
        self,
        request: Request,
        *,
        deadline_s: float = 5.0,
        weights: WeightsSpec = None,
        max_cost: float | None = None,
        preview: bool = True,
        priority: Priority | str | int = Priority.NORMAL,
        shard: ShardPolicy | None = None,
    ) -> GraphResult:
        """Decompose ``request`` into microtasks, auction the ready ones together, execute them
        concurrently (each falling back down its own ranking) and combine the results.

        ``max_cost`` and ``weights`` apply to each microtask; ``deadline_s`` to the whole
        request. ``shard`` overrides the requester's :class:`ShardPolicy` for this request.
        Raises like :meth:`run`, the message naming the microtask that failed.

        Fixed peers advertise no ``max_batch``: when nobody bids on an unsharded request and
        some candidate's limit was unknown, one call for bids on a single row (never an order)
        learns the limits from the bids, and the request runs again, sharded, if that splits it."""
        if not isinstance(request, Request):
            raise ConfigError(f"submit takes a Request (Request.single or Request.graph), got {request!r}")
        _check_terms(deadline_s, weights, max_cost)
        terms = self._terms(deadline_s, weights, max_cost, priority, preview)
        policy = shard or self._shard
        async with self.queue.slot(parse_priority(priority), terms.deadline):
            await self.discovery.start()
            await self.discovery.first_exchange(min(self._bid_timeout_s, self._bid_share * deadline_s))
            unknown = any(self._broker.limits_unknown(node.capability) for node in request.nodes)
            graph = self._decompose(request, policy)
            try:
                outcome = await GraphRun(
                    graph, self._broker, terms, prefix=f"{next(self._task_numbers)}/"
                ).run()
            except NoBidsError:
                if graph.shards or not unknown or not request.shardable:
                    raise
                await self._learn_limits(request, terms, deadline_s)
                graph = self._decompose(request, policy)
                if not graph.shards:
                    raise  # the limits did not split it: the first answer stands
                outcome = await GraphRun(
                    graph, self._broker, terms, prefix=f"{next(self._task_numbers)}/"
                ).run()
        await self._acknowledge()
        return outcome

    def _decompose(self, request: Request, policy: ShardPolicy) -> TaskGraph:
        limits = [self._broker.max_batch(node.capability, policy.min_candidates) for node in request.nodes]
        return decompose(request, policy, max_batch=min((n for n in limits if n), default=0))

    async def _learn_limits(self, request: Request, terms: Terms, deadline_s: float) -> None:
        """Bids on one row of each node that takes request inputs: each bid carries its model's
        ``max_batch``, which the bid manager remembers per peer and capability."""
        prepared = []
        for node in request.nodes:
            refs = {argument: parse_ref(ref) for argument, ref in node.inputs.items()}
            sources = {argument: ref.name for argument, ref in refs.items() if isinstance(ref, FromInput)}
            if len(sources) < len(refs):
                continue  # fed by another node: its batch follows the nodes before it
            row = {argument: request.inputs[name][:1] for argument, name in sources.items()}
            task_id = f"{next(self._task_numbers)}/limits"
            prepared.append(await self._broker.prepare(task_id, node.capability, row, terms))
        if prepared:
            await self._broker.offers(prepared, terms, deadline_s)

    async def report_outcome(self, task: str | Result, score: float) -> None:
        """Tell the requester how good a delivered result turned out (a label, a rating), in [0, 1].

        ``task`` is a :class:`Result` or its ``task_ref``. The peer's profile learns from it and
        the peer gets an OUTCOME notice. An unknown task raises :class:`UnknownTaskError`."""
        if not (isinstance(score, int | float) and math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ConfigError(f"an outcome score is a number in [0, 1], got {score!r}")
        reference = task.task_ref if isinstance(task, Result) else task
        pending = self.memory.outcome(reference, float(score))
        self._feedback.send_outcome(pending.request_id, pending.bid, float(score))

    def _call_for_bids(self, task: TaskRef, deadline_s: float) -> CallForBids:
        """A signed call for bids on one task (scripts/bench_auction.py drives rounds with it)."""
        issued = self.clock.wall_ms()
        return call_for_bids(self.identity, [task], issued, issued + int(deadline_s * 1000))

    def _terms(
        self,
        deadline_s: float,
        weights: WeightsSpec,
        max_cost: float | None,
        priority: Priority | str | int,
        preview: bool,
        selection: Selection | None = None,
    ) -> Terms:
        if selection is not None and not isinstance(selection, Selection):
            raise ConfigError(f"selection is a Selection, got {type(selection).__name__}")
        return Terms(
            deadline=self.clock.monotonic() + deadline_s,
            deadline_ms=self.clock.wall_ms() + int(deadline_s * 1000),
            weights=weights,
            max_cost=max_cost,
            priority=int(parse_priority(priority)),
            preview=preview,
            selection=selection if selection is not None else ANY,
            clock=self.clock,
        )
