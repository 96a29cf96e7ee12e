"""How a peer decides whether, and what, to bid for one microtask.

How this works
--------------
Bidding has two stages, both pure (values in, values out; no sockets, no clock):

1. :func:`decide` screens every hosted model against the task's hard requirements (capability,
   model id, input spec, batch, tokens, language, the node's load); see :mod:`.screening`.
2. Each model that passes asks its :class:`Strategy` for :class:`BidTerms` (confidence, expected
   latency, cost) or a :class:`NoBid`. The node answers with the best offer among its models:
   the highest confidence, then the lowest cost.

A strategy is any object with ``name``, ``bid(task, model, load)``, ``learn(notice)``,
``snapshot()`` and a bounded ``history``. It sees the model through :class:`ModelView`, the
node's :class:`Load`, and the requester's :class:`Notice` feedback (win, loss, outcome). A config
names one per hosted model with ``strategy = "..."`` and passes ``[models.strategy_options]`` to
its factory; :func:`register_strategy` adds new ones. Built in (docs/architecture.md section 6):

- ``confidence``: the model's own confidence on this input (:mod:`.confidence`).
- ``fixed``: a declared confidence, whatever the input (:mod:`.confidence`).
- ``specialization``: confident inside a declared domain, declines or discounts outside
  (:mod:`.specialization`).
- ``resource-aware``: price and promised latency rise with load; declines near full
  (:mod:`.resource`).
- ``learning``: a price multiplier from wins and losses, a confidence offset from outcomes
  (:mod:`.learning`).

:class:`StrategyJournal` keeps the history on disk as JSON lines (:mod:`.journal`).
"""

from atomic_p2p.peer.strategies.base import (
    HISTORY_LENGTH,
    BaseStrategy,
    CountingStrategy,
    Record,
    WrappingStrategy,
    own_confidence,
)
from atomic_p2p.peer.strategies.bidding import (
    BidTerms,
    ClassPredictor,
    FeedbackKind,
    HistoryPoint,
    InputSpec,
    Load,
    M,
    ModelView,
    NoBid,
    NoBidReason,
    Notice,
    Strategy,
    Task,
)
from atomic_p2p.peer.strategies.confidence import ConfidenceStrategy, FixedStrategy
from atomic_p2p.peer.strategies.journal import JOURNAL_NAME, JournalEntry, StrategyJournal, read_journal
from atomic_p2p.peer.strategies.learning import LearningSettings, LearningStrategy
from atomic_p2p.peer.strategies.registry import STRATEGIES, StrategyFactory, make_strategy, register_strategy
from atomic_p2p.peer.strategies.resource import ResourceAwareStrategy, ResourceSettings
from atomic_p2p.peer.strategies.screening import decide, screen
from atomic_p2p.peer.strategies.specialization import Outside, SpecializationSettings, SpecializationStrategy

__all__ = [
    "HISTORY_LENGTH",
    "JOURNAL_NAME",
    "STRATEGIES",
    "BaseStrategy",
    "BidTerms",
    "ClassPredictor",
    "ConfidenceStrategy",
    "CountingStrategy",
    "FeedbackKind",
    "FixedStrategy",
    "HistoryPoint",
    "InputSpec",
    "JournalEntry",
    "LearningSettings",
    "LearningStrategy",
    "Load",
    "M",
    "ModelView",
    "NoBid",
    "NoBidReason",
    "Notice",
    "Outside",
    "Record",
    "ResourceAwareStrategy",
    "ResourceSettings",
    "SpecializationSettings",
    "SpecializationStrategy",
    "Strategy",
    "StrategyFactory",
    "StrategyJournal",
    "Task",
    "WrappingStrategy",
    "decide",
    "make_strategy",
    "own_confidence",
    "read_journal",
    "register_strategy",
    "screen",
]
