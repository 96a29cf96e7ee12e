"""The two stages of a bid: the checks every strategy shares, then the best offer among models.

How this works
--------------
:func:`decide` screens every hosted model against the task's hard requirements: capability,
requested model id, input specs against the model's contract (names, dtypes, dimensions
within bounds, one batch; batch <= max_batch; a text task goes to models with a tokenizer, whose
own token count of the previewed texts is held to ``max_input_tokens``), token and language
constraints (:func:`~atomic_p2p.peer.text.language_supported`), and the node's load. These checks are the same for every strategy, so a strategy
cannot bid for work its model cannot do. Each model that passes asks its strategy for terms or
a refusal; the node answers with the best offer among its models (the highest confidence, then
the lowest cost). Terms that are not finite, or that cost more than the task's ``max_cost``,
are dropped here, so a strategy bug never reaches a signed bid. A model that raises while its
strategy looks at the preview (an :class:`~atomic_p2p.errors.ExecutionError` from the hosted model)
declines that task with ``MODEL_ERROR``; the other models and tasks are answered as usual.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from atomic_p2p.errors import ExecutionError, shown
from atomic_p2p.peer.strategies.bidding import (
    BidTerms,
    InputSpec,
    Load,
    M,
    ModelView,
    NoBid,
    NoBidReason,
    Strategy,
    Task,
    TextReader,
)
from atomic_p2p.peer.text import language_supported
from atomic_p2p.tensors import NAMES

OFFERED_NAMED = 8  # capabilities an unknown-capability decline names; the rest are counted
NAME_CHARS = 64  # a capability named in a decline is cut here (the requester's is untrusted)

# --- stage 1: the checks every strategy shares --------------------------------------------------


def screen(task: Task, model: ModelView) -> NoBid | None:
    """The hard requirements a model must meet before its strategy is asked."""
    if task.text_count:
        refusal = _screen_text(task, model)
        if refusal is not None:
            return refusal
    else:
        problem = model.inputs_problem(task.inputs)
        if problem is not None:
            return NoBid(NoBidReason.BAD_INPUT_SPEC, problem)
    if task.batch_size > model.max_batch:
        return NoBid(
            NoBidReason.CONSTRAINT_VIOLATED, f"batch {task.batch_size} exceeds max_batch {model.max_batch}"
        )
    if model.max_input_tokens and task.input_tokens > model.max_input_tokens:
        return NoBid(
            NoBidReason.CONSTRAINT_VIOLATED,
            f"{task.input_tokens} input tokens exceed max_input_tokens {model.max_input_tokens}",
        )
    if not language_supported(model.supported_languages, task.language):
        return NoBid(NoBidReason.CONSTRAINT_VIOLATED, f"language {shown(task.language, 32)} is not supported")
    return _screen_preview(task, model)


def _screen_text(task: Task, model: ModelView) -> NoBid | None:
    # A text task carries texts alone for now: the model's tokenizer makes all of its inputs.
    tokens = model.count_tokens(task.texts) if isinstance(model, TextReader) else None
    if tokens is None:
        return NoBid(NoBidReason.BAD_INPUT_SPEC, f"{model.model_id} takes no text")
    if task.inputs:
        return NoBid(NoBidReason.BAD_INPUT_SPEC, "a text task with tensor inputs too is not supported")
    # The peer's own count of the previewed texts; without a preview, the requester's estimate.
    if model.max_input_tokens and tokens > model.max_input_tokens:
        return NoBid(
            NoBidReason.CONSTRAINT_VIOLATED,
            f"{tokens} input tokens (by {model.model_id}'s tokenizer) exceed max_input_tokens "
            f"{model.max_input_tokens}",
        )
    return None


def _screen_preview(task: Task, model: ModelView) -> NoBid | None:
    # A preview shows rows of the task's first input; the model must take just that input.
    rows = 0
    preview = task.preview
    for tensor in preview:
        dtype = NAMES.get(tensor.dtype) or str(tensor.dtype).removeprefix("torch.")
        shape = tuple(tensor.shape)
        problem = model.inputs_problem([InputSpec(task.inputs[0].name, dtype, shape)])
        if problem is not None:
            return NoBid(NoBidReason.BAD_INPUT_SPEC, f"preview: {problem}")
        if len(preview) > 1 and shape[1:] != tuple(preview[0].shape[1:]):
            return NoBid(NoBidReason.BAD_INPUT_SPEC, "preview: its tensors differ in shape per example")
        rows += shape[0]
    if rows > model.max_batch:
        # Scoring a preview costs a forward pass; it may not be larger than a paid batch.
        return NoBid(
            NoBidReason.CONSTRAINT_VIOLATED, f"preview of {rows} rows exceeds max_batch {model.max_batch}"
        )
    return None


# --- stage 2: ask the strategies, keep the best offer ------------------------------------------


# What screening a call's tasks found, per task shape (see decide's ``screened``).
Screened = dict[tuple[object, ...], "NoBid | list[tuple[M, Strategy, NoBid | None]]"]


def decide(
    task: Task, candidates: Sequence[tuple[M, Strategy]], load: Load, screened: Screened | None = None
) -> tuple[M, BidTerms] | NoBid:
    """The node's answer to one task: the best (model, terms), or why it declines.

    ``screened``: a memory for the tasks of one call for bids (one ``load``). Tasks that differ
    only in their preview's values and their id (a batch cut into microtasks: the same
    capability, inputs, preview shapes, limits) get the same screening, so it runs once for them
    and each task asks only the strategies; a text task is screened on its own texts."""
    if load.draining:
        return NoBid(NoBidReason.DRAINING, "the node is shutting down")
    found: NoBid | list[tuple[M, Strategy, NoBid | None]] | None
    if screened is None or task.text_count:
        found = _screen_all(task, candidates, load)
    else:
        shapes = tuple([(tensor.dtype, tensor.shape) for tensor in task.preview])
        key = (task.capability, task.model_id, task.inputs, shapes, task.input_tokens, task.language)
        found = screened.get(key)
        if found is None:
            found = screened[key] = _screen_all(task, candidates, load)
    if isinstance(found, NoBid):
        return found
    offers: list[tuple[M, BidTerms]] = []
    declines: list[NoBid] = []
    for model, strategy, refusal in found:
        answer = refusal or _ask(strategy, task, model, load)
        if isinstance(answer, NoBid):
            declines.append(answer)
        else:
            offers.append((model, answer))
    if not offers:
        return declines[0]
    return max(offers, key=lambda offer: (offer[1].confidence, -offer[1].cost))


def _screen_all(
    task: Task, candidates: Sequence[tuple[M, Strategy]], load: Load
) -> NoBid | list[tuple[M, Strategy, NoBid | None]]:
    """Why no hosted model can take ``task`` at all, or each matching model with its refusal
    from :func:`screen` (None: its strategy is asked)."""
    matching = [(m, s) for m, s in candidates if task.capability in m.capabilities]
    if task.model_id:
        if not any(m.model_id == task.model_id for m, _ in candidates):
            return NoBid(NoBidReason.UNKNOWN_MODEL, f"no model {shown(task.model_id)} here")
        matching = [(m, s) for m, s in matching if m.model_id == task.model_id]
    if not matching:
        return NoBid(
            NoBidReason.UNKNOWN_CAPABILITY,
            f"no model here offers {shown(task.capability)}; offered: {_offered(candidates)}",
        )
    if load.saturated:
        return NoBid(NoBidReason.OVERLOADED, f"{load.in_flight} running and {load.queued} queued")
    return [(model, strategy, screen(task, model)) for model, strategy in matching]


def _offered(candidates: Sequence[tuple[M, Strategy]]) -> str:
    """What the hosted models do offer, sorted, at most OFFERED_NAMED of them named."""
    names = sorted({capability for model, _ in candidates for capability in model.capabilities})
    named = ", ".join(name[:NAME_CHARS] for name in names[:OFFERED_NAMED]) or "nothing"
    return named + (f" and {len(names) - OFFERED_NAMED} more" if len(names) > OFFERED_NAMED else "")


def _ask(strategy: Strategy, task: Task, model: ModelView, load: Load) -> BidTerms | NoBid:
    try:
        terms = strategy.bid(task, model, load)
    except ExecutionError as error:
        # The model raised on the preview: its failure, declined for this task alone.
        return NoBid(NoBidReason.MODEL_ERROR, str(error))
    if isinstance(terms, NoBid):
        return terms
    if not (
        math.isfinite(terms.confidence)
        and math.isfinite(terms.expected_latency_ms)
        and math.isfinite(terms.cost)
    ):
        # A strategy bug must not put NaN into a signed bid.
        return NoBid(NoBidReason.UNSPECIFIED, f"strategy {strategy.name!r} produced non-finite terms")
    if task.max_cost and terms.cost > task.max_cost:
        return NoBid(NoBidReason.BELOW_COST, f"cost {terms.cost:g} exceeds max_cost {task.max_cost:g}")
    return terms
