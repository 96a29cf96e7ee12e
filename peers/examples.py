"""The example peers of this folder, set up for the project's tests, benchmarks and experiments.

Not part of the package: this reads the TOML configs next to it, so it needs a source checkout.
With the repository root on ``sys.path`` (pytest's ``pythonpath``; scripts insert it) it imports
as the namespace package ``peers.examples``::

    async with running_peers(["small", "large"], tmp_path) as (small, large):
        small.address, small.peer_id, small.models["digits-small"]

Every example peer gets its own ``data_dir`` under ``tmp_path``, port 0, and one shared
trained-weight cache (:func:`weights_cache_dir`), so only the first start of a session trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from atomic_p2p.peer.config import PeerConfig, load_config
from atomic_p2p.peer.node import PeerNode

PEERS_DIR = Path(__file__).resolve().parent
EXAMPLE_PEERS = (
    "small",
    "large",
    "specialist",
    "slow",
    "small-fixed",
    "large-discount",
    "text-small",
    "text-large",
    "lm-small",
)


def weights_cache_dir() -> Path:
    """Where example peers in tests keep trained weights: ``$ATOMIC_P2P_WEIGHTS_CACHE``, else a
    per-user directory under the system temp dir. Entries are keyed by recipe and source, so
    sharing it across runs is safe."""
    override = os.environ.get("ATOMIC_P2P_WEIGHTS_CACHE")
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"atomic-p2p-weights-{os.getuid()}"


def _example_path(name: str) -> Path:
    path = PEERS_DIR / f"{name}.toml"
    if not path.exists():
        raise FileNotFoundError(f"no example peer {name!r}; there are {', '.join(EXAMPLE_PEERS)}")
    return path


def example_config(
    name: str, tmp_path: Path, *, model_overrides: Mapping[str, Any] | None = None, **overrides: Any
) -> PeerConfig:
    """``peers/<name>.toml`` set up for a test: data_dir under ``tmp_path``, port 0, shared weights.

    ``overrides`` replace :class:`PeerConfig` fields (``queue_limit=1``); ``model_overrides``
    replace :class:`ModelConfig` fields of every model (``extra_latency_ms=500``).
    """
    config = load_config(_example_path(name))
    models = tuple(dataclasses.replace(m, **(model_overrides or {})) for m in config.models)
    settings: dict[str, Any] = {"data_dir": tmp_path / name, "port": 0, "cache_dir": weights_cache_dir()}
    settings.update(overrides)
    return dataclasses.replace(config, models=models, **settings)


def example_table(name: str, /, **peer_overrides: Any) -> dict[str, Any]:
    """``peers/<name>.toml`` as a config table for a peer process (:func:`~atomic_p2p.testing.peer_processes`).

    Model factories that name a file here are made absolute, so the table works written anywhere;
    ``cache_dir`` is the shared :func:`weights_cache_dir`; ``peer_overrides`` replace ``[peer]``
    keys (``name="proc-1"``, ``queue_limit=0``).
    """
    table = tomllib.loads(_example_path(name).read_text())
    table["peer"] = {**table["peer"], "cache_dir": str(weights_cache_dir()), **peer_overrides}
    for model in table["models"]:
        file, _, function = model["factory"].rpartition(":")
        if file.endswith(".py") and not Path(file).is_absolute():
            model["factory"] = f"{PEERS_DIR / file}:{function}"
    return table


async def start_example_peers(names: Sequence[str], tmp_path: Path, **overrides: Any) -> list[PeerNode]:
    """Start one in-process node per example name (``overrides`` as for :func:`example_config`)."""
    nodes: list[PeerNode] = []
    try:
        for name in names:  # one at a time: a first run trains, and two trainings only contend
            nodes.append(await PeerNode.start(example_config(name, tmp_path, **overrides)))
    except BaseException:
        for node in nodes:
            await node.stop()
        raise
    return nodes


@contextlib.asynccontextmanager
async def running_peers(
    names: Sequence[str], tmp_path: Path, **overrides: Any
) -> AsyncIterator[list[PeerNode]]:
    """:func:`start_example_peers`, stopped on exit."""
    nodes = await start_example_peers(names, tmp_path, **overrides)
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.stop(grace=1.0)
