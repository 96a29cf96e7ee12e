"""Selection: a caller's model, excluded and preferred peers, as the evaluator applies them."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomic_p2p.errors import AuctionError, ConfigError
from atomic_p2p.requester import Requester, Selection
from atomic_p2p.requester.evaluator import Ask, EvaluatorConfig, evaluate
from atomic_p2p.requester.ranking import Exclusion
from atomic_p2p.testing import FakeClock, InMemoryNetwork, generator_config, make_bid, peer_identity

GREEDY = EvaluatorConfig.greedy()


def _decide(selection: Selection):  # type: ignore[no-untyped-def]
    bids = [
        make_bid("sharp", model_id="big", confidence=0.95),
        make_bid("middle", model_id="big", confidence=0.85),
        make_bid("dull", model_id="small", confidence=0.6),
    ]
    ask = Ask(task_id="t", capability="", time_left_ms=5000.0, selection=selection)
    return evaluate(bids, ask, config=GREEDY)


def _order(decision) -> list[str]:  # type: ignore[no-untyped-def]
    return [scored.item.address for scored in decision.ranked]


def test_the_default_selection_leaves_the_ranking_alone() -> None:
    assert _order(_decide(Selection())) == ["sharp.test:1", "middle.test:1", "dull.test:1"]


def test_a_model_id_excludes_bids_on_other_models_with_a_reason() -> None:
    decision = _decide(Selection(model_id="small"))
    assert _order(decision) == ["dull.test:1"]
    assert {e.item.address for e in decision.excluded} == {"sharp.test:1", "middle.test:1"}
    assert all(e.kind is Exclusion.SELECTION and "'small'" in e.reason for e in decision.excluded)
    assert decision.rationale is not None
    assert [note.kind for note in decision.rationale.excluded] == ["selection", "selection"]


def test_excluded_peers_go_by_address_or_id_prefix() -> None:
    sharp = peer_identity("sharp").peer_id.hex
    decision = _decide(Selection(exclude=(sharp[:8], "dull.test:1")))
    assert _order(decision) == ["middle.test:1"]
    assert all("excluded this peer" in e.reason for e in decision.excluded)


def test_preferred_peers_come_first_in_the_order_given() -> None:
    middle = peer_identity("middle").peer_id.hex
    decision = _decide(Selection(prefer=("dull.test:1", middle)))
    assert _order(decision) == ["dull.test:1", "middle.test:1", "sharp.test:1"]
    assert decision.price == decision.ranked[0].item.cost  # first price: the new winner's own


@pytest.mark.parametrize(
    "fields",
    [
        {"prefer": "abcdef0123"},  # a string, not a list
        {"exclude": ["abc"]},  # too short a prefix, not an address
        {"exclude": ["not-hex-at-all"]},
        {"prefer": ["x" * 300 + ":1"]},
        {"prefer": [f"{i:016x}" for i in range(65)]},
        {"fallback": "no"},
        {"model_id": 7},
    ],
)
def test_bad_selections_are_config_errors(fields: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Selection(**fields)  # type: ignore[arg-type]


async def test_a_requester_keeps_to_the_model_and_tries_no_fallback_when_told(tmp_path: Path) -> None:
    clock = FakeClock(autojump=True)
    network = InMemoryNetwork(clock)
    fragile = network.add_peer(generator_config("fragile", tmp_path, confidence=0.95, fail_at_length=5))
    steady = network.add_peer(generator_config("steady", tmp_path, confidence=0.6))
    addresses = [fragile.address, steady.address]
    async with Requester(
        addresses, transport=network.transport(), clock=clock, evaluator=GREEDY
    ) as requester:
        fallen = await requester.generate("generate/count", [1, 2, 3], max_tokens=6).collect()
        assert [part.bid.model_id for part in fallen.parts] == ["fragile-lm", "steady-lm"]
        alone = Selection(prefer=(fragile.address,), fallback=False)  # fragile first, though it failed
        with pytest.raises(AuctionError, match="did not finish"):
            await requester.generate("generate/count", [1, 2, 3], max_tokens=6, selection=alone).collect()
        chosen = requester.generate(
            "generate/count", [1, 2, 3], max_tokens=6, selection=Selection("steady-lm")
        )
        result = await chosen.collect()
    assert result.tokens == (4, 5, 6, 7, 8, 9)
    assert [part.bid.model_id for part in result.parts] == ["steady-lm"]
