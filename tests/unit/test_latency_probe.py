"""Latency quotes follow measurement: executions and idle-model probes move them
(atomic_p2p.peer.latency; the requester's side is in test_evaluator.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from atomic_p2p.peer.latency import LatencyProbe, stale
from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.node import PeerNode, load_models
from atomic_p2p.peer.strategies import Load
from atomic_p2p.testing import seller_config

IDLE = Load(in_flight=0, queued=0, capacity=2, queue_limit=4)
BUSY = Load(in_flight=2, queued=1, capacity=2, queue_limit=4)
STALE_MS = 500.0  # what a peer might have measured at start beside a neighbour that was training


@pytest.fixture
def model(tmp_path: Path) -> HostedModel:
    (hosted,) = load_models(seller_config("probe", tmp_path)).values()
    return hosted


def _make_stale(model: HostedModel, age_s: float = 100.0) -> None:
    model.latency.value = STALE_MS
    model.latency.updated_at = time.monotonic() - age_s


def test_only_models_idle_for_the_interval_are_due(model: HostedModel) -> None:
    now = time.monotonic()
    assert stale([model], now, 10.0) == []
    _make_stale(model, age_s=11.0)
    assert stale([model], now, 10.0) == [model]


async def test_a_probe_brings_an_idle_models_stale_quote_down_to_what_it_measures(model: HostedModel) -> None:
    _make_stale(model)
    probe = LatencyProbe({model.model_id: model}, 10.0, lambda: IDLE)
    assert await probe.probe_once() == [model.model_id]
    # Five calls of a small MLP take well under a millisecond each: 500 * 0.8**5 is about 164.
    assert model.expected_latency_ms < 0.4 * STALE_MS
    assert await probe.probe_once() == []  # just measured: not due again yet
    assert probe.probes == 1


async def test_a_busy_node_does_not_probe(model: HostedModel) -> None:
    _make_stale(model)
    probe = LatencyProbe({model.model_id: model}, 10.0, lambda: BUSY)
    assert await probe.probe_once() == []
    assert model.expected_latency_ms == STALE_MS


def test_executions_move_the_quote_too(model: HostedModel) -> None:
    _make_stale(model)
    for _ in range(10):
        model.run(torch.zeros(8, 64))
    assert model.expected_latency_ms < 0.2 * STALE_MS


async def test_a_running_node_re_measures_a_model_nobody_buys(tmp_path: Path) -> None:
    node = await PeerNode.start(seller_config("probing", tmp_path, latency_probe_s=0.2))
    try:
        (hosted,) = node.models.values()
        _make_stale(hosted)
        for _ in range(100):  # at most 10 s on a loaded machine; a probe is due every 0.2 s
            if hosted.expected_latency_ms < 0.4 * STALE_MS:
                break
            await asyncio.sleep(0.1)
        assert hosted.expected_latency_ms < 0.4 * STALE_MS
        assert node.latency_probe.probes >= 1
    finally:
        await node.stop(grace=0.5)
