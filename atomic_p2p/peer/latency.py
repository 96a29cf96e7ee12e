"""Keeping latency quotes honest for models that are not running (docs/architecture.md section 6).

How this works
--------------
A model's quote is the average of its measured calls (:class:`~atomic_p2p.peer.models.LatencyEwma`)
plus its configured ``extra_latency_ms``. Every executed order feeds that average, so a model
that works keeps an honest quote under the node's current load by itself. A model that does not
win would keep its last measurement forever, and one taken at a bad moment (at start, beside a
neighbour that was training) can price it out of every auction, so it never runs and never
corrects itself. :class:`LatencyProbe` breaks that loop: every ``interval_s`` it re-measures each
model whose average has not moved for that long (:meth:`HostedModel.measure_latency`, a few calls
on warm-up inputs in a worker thread), while the node has a free worker slot, so probing never
queues behind or ahead of paid work. :func:`stale` is the pure choice of which models are due.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from atomic_p2p.peer.models import HostedModel
from atomic_p2p.peer.strategies import Load

log = logging.getLogger(__name__)


def stale(models: Iterable[HostedModel], now: float, interval_s: float) -> list[HostedModel]:
    """The models whose latency average has not moved for ``interval_s`` (``now``: monotonic)."""
    return [model for model in models if now - model.latency.updated_at >= interval_s]


class LatencyProbe:
    """Re-measures idle models every ``interval_s`` (see the module docstring); ``load`` says
    whether the node has a free worker slot, ``offload`` runs a blocking call off the loop."""

    def __init__(
        self,
        models: Mapping[str, HostedModel],
        interval_s: float,
        load: Callable[[], Load],
        offload: Callable[..., Awaitable[float]] | None = None,
    ) -> None:
        self.models = models
        self.interval_s = interval_s
        self._load = load
        self._offload = offload or asyncio.to_thread
        self._task: asyncio.Task[None] | None = None
        self.probes = 0

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="latency-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def probe_once(self) -> list[str]:
        """Re-measure every stale model while a worker slot is free; the ids measured."""
        measured = []
        for model in stale(self.models.values(), time.monotonic(), self.interval_s):
            load = self._load()
            if load.draining or load.in_flight >= load.capacity:
                break  # paid work first: the next round tries again
            try:
                median = await self._offload(model.measure_latency)
            except Exception:  # a model that fails here fails its orders too; say so, keep serving
                log.warning("latency probe of %s failed", model.model_id, exc_info=True)
                continue
            self.probes += 1
            measured.append(model.model_id)
            log.debug(
                "latency probe: %s %.2f ms (quote %.2f ms)", model.model_id, median, model.expected_latency_ms
            )
        return measured

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe_once()
