"""What the market offers now, as OpenAI model names: capabilities, model ids and ``auto``.

How this works
--------------
Pure: :func:`catalog` reads the gossip :class:`~atomic_p2p.gossip.directory.Directory` (live peers
only) into :class:`Offer` rows, one per (capability, model id). ``GET /v1/models`` lists every
capability and every model id among them; a request's ``model`` is resolved by
:meth:`Catalog.resolve`:

- a capability (``generate/text``): any model for it;
- a model id (``docstrings-lm``): that model, through one of its capabilities of the right kind;
- ``auto``: the capability of the right kind that the most live models offer (ties: by name).

The right kind is what the endpoint sells: generation for completions, embedding for embeddings,
and the model must take text (peers tokenise the prompt themselves). A name nobody offers is an
:class:`~atomic_p2p.errors.UnknownModelError` (404); a name offered only for another kind of task
is a ConfigError (400) saying so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from atomic_p2p.contract import TaskKind
from atomic_p2p.errors import ConfigError, UnknownModelError
from atomic_p2p.gateway.mapping import clip
from atomic_p2p.gossip.directory import Directory

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Offer:
    """One live model for one capability, on one peer."""

    capability: str
    model_id: str
    kind: TaskKind | None
    takes_text: bool
    peer: str  # hex id
    price_hint: float


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: a capability, and a model id when the request named one."""

    capability: str
    model_id: str = ""


class Catalog:
    def __init__(self, offers: Iterable[Offer]) -> None:
        self.offers = tuple(offers)

    def resolve(self, model: str, kind: TaskKind) -> Route:
        usable = [offer for offer in self.offers if offer.kind is kind and offer.takes_text]
        if model == AUTO:
            counts = Counter(offer.capability for offer in usable)
            if not counts:
                raise UnknownModelError(f"no live peer offers a text {kind.value} model")
            return Route(min(counts, key=lambda capability: (-counts[capability], capability)))
        if any(offer.capability == model for offer in usable):
            return Route(model)
        matching = sorted(offer.capability for offer in usable if offer.model_id == model)
        if matching:
            return Route(matching[0], model)
        if any(model in (offer.capability, offer.model_id) for offer in self.offers):
            raise ConfigError(
                f"model {clip(model)} is not a text {kind.value} model; GET /v1/models lists them"
            )
        raise UnknownModelError(
            f"no live peer offers model {clip(model)}; GET /v1/models lists what is offered"
        )

    def models(self) -> list[dict[str, object]]:
        """The ``data`` of ``GET /v1/models``: capabilities, then model ids, each with its peers."""
        listed: list[dict[str, object]] = []
        for key, label in (("capability", "capability"), ("model_id", "model")):
            names = sorted({getattr(offer, key) for offer in self.offers})
            for name in names:
                offers = [offer for offer in self.offers if getattr(offer, key) == name]
                listed.append(_model_object(name, label, offers))
        if self.offers:
            listed.append({"id": AUTO, "object": "model", "created": 0, "owned_by": "atomic-p2p"})
        return listed


def _model_object(name: str, label: str, offers: list[Offer]) -> dict[str, object]:
    kinds = sorted({offer.kind.value for offer in offers if offer.kind is not None})
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "atomic-p2p",
        "atomic": {
            "type": label,
            "kinds": kinds,
            "takes_text": any(offer.takes_text for offer in offers),
            "peers": len({offer.peer for offer in offers}),
            "capabilities": sorted({offer.capability for offer in offers}),
            "models": sorted({offer.model_id for offer in offers}),
            "min_price_hint": min(offer.price_hint for offer in offers),
        },
    }


def catalog(directory: Directory | None) -> Catalog:
    """The live offers in ``directory`` (an empty catalog without gossip)."""
    if directory is None:
        return Catalog(())
    offers = []
    for capability in directory.capabilities():
        for found in directory.candidates(capability):
            model = found.model
            offers.append(
                Offer(
                    capability,
                    model.model_id,
                    model.kind,
                    model.takes_text,
                    found.record.peer_id.hex,
                    model.price_hint,
                )
            )
    return Catalog(offers)
