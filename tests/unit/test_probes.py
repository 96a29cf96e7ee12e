"""The pure parts of standardized benchmarking: the schedule, the probe set, the scorer."""

from __future__ import annotations

import pytest
import torch

from atomic_p2p.errors import ConfigError
from atomic_p2p.requester.probes import ProbeConfig, ProbeSchedule, ProbeSet, accuracy


def test_a_peer_is_due_at_most_once_per_gap() -> None:
    schedule = ProbeSchedule(budget=1.0, min_gap_s=10.0)
    assert schedule.due(["a", "b"], 0.0) == ["a", "b"]
    schedule.started("a", 0.0)
    assert schedule.due(["a", "b"], 9.9) == ["b"]
    assert schedule.due(["a", "b"], 10.0) == ["a", "b"]


def test_the_budget_caps_who_is_affordable() -> None:
    schedule = ProbeSchedule(budget=0.05, min_gap_s=0.0)
    schedule.paid("a", 0.016)
    schedule.paid("b", 0.032)
    assert schedule.remaining == pytest.approx(0.002)
    assert schedule.due(["a", "b", "c"], 0.0) == ["c"]  # c's price is unknown yet
    assert not schedule.exhausted(["a", "b", "c"])
    schedule.refused_as_too_dear("c")
    assert schedule.exhausted(["a", "b", "c"]) and schedule.due(["a", "b", "c"], 0.0) == []


def test_a_spent_budget_is_exhausted_even_for_unknown_peers() -> None:
    schedule = ProbeSchedule(budget=0.01, min_gap_s=0.0)
    schedule.paid("a", 0.01)
    assert schedule.remaining == 0 and schedule.exhausted(["new"]) and not schedule.affordable("new")


def test_the_probe_set_wraps_around() -> None:
    probe_set = ProbeSet({"x": torch.arange(10).reshape(5, 2)}, torch.arange(5), batch=3)
    inputs, labels = probe_set.take(1)
    assert labels.tolist() == [3, 4, 0] and inputs["x"][:, 0].tolist() == [6, 8, 0]
    with pytest.raises(ConfigError, match="leading dimension"):
        ProbeSet({"x": torch.zeros(4, 2)}, torch.zeros(5), batch=2)


def test_accuracy_of_logits_and_of_labels() -> None:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = torch.tensor([1, 0, 0, 0])
    assert accuracy({"logits": logits}, labels) == pytest.approx(0.75)
    assert accuracy({"logits": logits, "extra": torch.zeros(1)}, labels) == pytest.approx(0.75)
    assert accuracy({"classes": torch.tensor([1, 1, 0, 0])}, labels) == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="which output"):
        accuracy({"a": logits, "b": logits}, labels)
    with pytest.raises(ConfigError, match="do not match"):
        accuracy({"logits": logits[:3]}, labels)


@pytest.mark.parametrize(
    "fields",
    [
        {"budget": -1.0},
        {"budget": float("nan")},
        {"interval_s": 0.0},
        {"max_rate_per_peer": 0.0},
        {"batch": 0},
    ],
)
def test_bad_probe_configs_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ProbeConfig(**{"budget": 1.0, **fields})  # type: ignore[arg-type]
