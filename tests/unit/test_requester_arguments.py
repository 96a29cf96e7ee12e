"""Requester.run refuses bad arguments before it sends anything (no server is needed)."""

from __future__ import annotations

import math

import pytest
import torch

from atomic_p2p.errors import ConfigError, TensorError
from atomic_p2p.requester import Requester

GOOD = {"x": torch.zeros(2, 64)}


@pytest.mark.parametrize(
    ("capability", "inputs", "options"),
    [
        ("", GOOD, {}),
        ("classify/digits", {}, {}),
        ("classify/digits", {"": torch.zeros(1)}, {}),
        ("classify/digits", {"x": [1.0, 2.0]}, {}),
        ("classify/digits", GOOD, {"deadline_s": 0}),
        ("classify/digits", GOOD, {"deadline_s": math.inf}),
        ("classify/digits", GOOD, {"max_cost": -1.0}),
        ("classify/digits", GOOD, {"weights": "cheapest"}),
        ("classify/digits", GOOD, {"weights": {"accuracy": -1}}),
    ],
)
async def test_bad_arguments_raise_config_error(capability: str, inputs: dict, options: dict) -> None:
    # Port 1 would refuse a connection; none is attempted, so the error is the argument's.
    async with Requester(["127.0.0.1:1"]) as requester:
        with pytest.raises(ConfigError):
            await requester.run(capability, inputs, **options)


async def test_a_dtype_that_cannot_travel_is_a_tensor_error() -> None:
    async with Requester(["127.0.0.1:1"]) as requester:
        with pytest.raises(TensorError):
            await requester.run("classify/digits", {"x": torch.zeros(2, dtype=torch.complex64)})


@pytest.mark.parametrize("peers", ["127.0.0.1:1", ["127.0.0.1:1", ""], [None]])
def test_peers_must_be_addresses(peers: object) -> None:
    with pytest.raises(ConfigError):
        Requester(peers)  # type: ignore[arg-type]


def test_duplicate_peers_are_asked_once() -> None:
    assert Requester(["a:1", "b:2", "a:1"]).peers == ("a:1", "b:2")


def test_an_ephemeral_identity_is_made_when_none_is_given() -> None:
    first, second = Requester(["a:1"]), Requester(["a:1"])
    assert first.identity.peer_id != second.identity.peer_id
