"""Spot checks (atomic_p2p/requester/spotcheck.py): a share of tasks also runs on a second peer.

The market tests run real sellers on the in-memory network (atomic_p2p.testing.InMemoryNetwork):
signed bids, signed results, the real executor. Two honest peers host the same model (they
agree); the liar hosts another and claims 0.99, so it wins every auction on its claim alone while
no outcome is ever reported. Only spot checks can tell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atomic_p2p.errors import ConfigError
from atomic_p2p.requester import BidPolicy, Requester, SpotCheckConfig
from atomic_p2p.requester.evaluator import EvaluatorConfig
from atomic_p2p.requester.profiler import Observation, ProfileKey, ProfilerConfig, estimate, record
from atomic_p2p.requester.spotcheck import agreement
from atomic_p2p.store import PaymentKind, Store
from atomic_p2p.testing import FakeClock, InMemoryNetwork, InMemoryPeer, digits_batch, seller_config

CAPABILITY = "classify/digits"
PLAIN = BidPolicy(k_min=0, adaptive_tmax=False, cache=False, top_m=0)


def market(network: InMemoryNetwork, tmp_path: Path) -> dict[str, InMemoryPeer]:
    return {
        "honest": network.add_peer(seller_config("honest", tmp_path, confidence=0.8, seed=1)),
        "twin": network.add_peer(seller_config("twin", tmp_path, confidence=0.75, seed=1)),
        "liar": network.add_peer(seller_config("liar", tmp_path, confidence=0.99, seed=7)),
    }


async def winners(
    network: InMemoryNetwork,
    clock: FakeClock,
    peers: dict[str, InMemoryPeer],
    tasks: int,
    **options: object,
) -> list[str]:
    names = {peer.address: name for name, peer in peers.items()}
    won = []
    async with Requester(
        [peer.address for peer in peers.values()],
        transport=network.transport(),
        clock=clock,
        evaluator=EvaluatorConfig.greedy(),
        bids=PLAIN,
        seed=0,
        **options,  # type: ignore[arg-type]
    ) as requester:
        for index in range(tasks):
            x, _ = digits_batch(8, offset=8 * index)
            result = await requester.run(CAPABILITY, {"x": x})
            won.append(names[result.winner.address])
    return won


async def test_without_spot_checks_a_confident_liar_wins_every_task(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    won = await winners(network, clock, market(network, tmp_path), 6)
    assert won == ["liar"] * 6


async def test_spot_checks_expose_a_confident_liar_and_are_logged(
    network: InMemoryNetwork, clock: FakeClock, tmp_path: Path
) -> None:
    peers = market(network, tmp_path)
    path = tmp_path / "requester.db"
    won = await winners(network, clock, peers, 10, spot_checks=SpotCheckConfig(share=1.0), store=path)
    assert won[0] == "liar"  # nothing is known yet: the claim wins
    assert "liar" not in won[4:], won  # every check it took part in was a disagreement
    store = Store.open(path)
    try:
        liar_id = peers["liar"].identity.peer_id.hex
        checks = store.observations(peer=liar_id, name="spot_check")
        assert checks and max(check.value for check in checks) < 0.5
        honest_checks = [
            check.value
            for name in ("honest", "twin")
            for check in store.observations(peer=peers[name].identity.peer_id.hex, name="spot_check")
        ]
        assert 1.0 in honest_checks  # the two honest peers checked each other and agreed
        probes = sum(totals.get(PaymentKind.PROBE.value, 0.0) for totals in store.ledger_totals().values())
        assert probes > 0  # a check is paid for, and booked apart from charges
    finally:
        store.close()


def test_agreement_scores_argmax_rows_and_exact_outputs() -> None:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    flipped = torch.tensor([[0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.9, 0.1]])
    assert agreement({"logits": logits}, {"logits": logits}) == 1.0
    assert agreement({"logits": logits}, {"logits": flipped}) == pytest.approx(0.75)
    tokens = torch.tensor([1, 2, 3, 4])
    assert agreement({"ids": tokens}, {"ids": torch.tensor([1, 2, 0, 0])}) == pytest.approx(0.5)
    assert agreement({"logits": logits}, {"other": logits}) == 0.0
    assert agreement({"logits": logits}, {"logits": logits[:2]}) == 0.0


def test_the_share_falls_with_trust_and_stays_up_for_a_peer_that_overclaims() -> None:
    config = SpotCheckConfig(share=0.5, min_share=0.02, trust_half=10.0)
    profiler = ProfilerConfig(decay=0.98)
    key = ProfileKey("p", "m", CAPABILITY)

    def after(n: int, claim: float, outcome: float) -> float:
        profile = None
        for i in range(n):
            profile = record(
                profile, key, Observation(i, outcome=outcome, promised_confidence=claim), profiler
            )
        assert profile is not None
        return config.share_for(estimate(profile, profiler), bias_tolerance=0.25)

    assert config.share_for(None, 0.25) == 0.5  # unknown: the full share
    calibrated = [after(n, 0.9, 0.9) for n in (1, 10, 100)]
    assert calibrated[0] > calibrated[1] > calibrated[2] and calibrated[2] < 0.15
    assert after(100, 0.99, 0.3) == pytest.approx(0.5)  # an overclaimer is never trusted
    assert SpotCheckConfig().enabled is False
    with pytest.raises(ConfigError):
        SpotCheckConfig(share=0.1, min_share=0.2)
    with pytest.raises(ConfigError):
        SpotCheckConfig(share=0.5, trust_half=0.0)
