"""The metric names docs/observability.md lists are the registry's, and JSON log lines parse."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from atomic_p2p import metrics
from atomic_p2p.cli import observability

ROOT = Path(__file__).resolve().parents[2]


def exposed_names() -> set[str]:
    """Every atomic_ family as a scrape names it (counters with their _total suffix)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        if family.name.startswith("atomic_"):
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_the_docs_table_lists_every_metric_and_no_other() -> None:
    text = (ROOT / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"^\| `(atomic_\w+)` \|", text, re.M))
    assert documented == exposed_names()


def test_metric_names_follow_the_conventions() -> None:
    for family in metrics.REGISTRY.collect():
        if not family.name.startswith("atomic_"):
            continue
        if family.type == "histogram" and "price" not in family.name:
            assert family.name.endswith("_seconds"), family.name
        assert family.name == family.name.lower()


def log_lines(log_format: str, emit: object) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(observability.JsonFormatter() if log_format == "json" else logging.Formatter())
    logger = logging.getLogger("atomic_p2p.test_observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        emit(logger)  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_stable_keys_extras_and_tracebacks() -> None:
    def emit(logger: logging.Logger) -> None:
        logger.info("peer %s serving\non two lines", "1a2b3c4d", extra={"port": 50051, "path": Path("/x")})
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("it failed")

    first, second = (json.loads(line) for line in log_lines("json", emit))
    assert set(first) == {"ts", "level", "logger", "msg", "port", "path"}
    assert first["msg"] == "peer 1a2b3c4d serving\non two lines"  # one line on the wire all the same
    assert first["level"] == "INFO" and first["logger"] == "atomic_p2p.test_observability"
    assert first["port"] == 50051 and first["path"] == "/x"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["ts"])
    assert second["level"] == "ERROR" and "ValueError: bad" in second["exc"]


def test_a_busy_metrics_port_is_a_usage_error() -> None:
    from atomic_p2p.errors import ConfigError

    server = metrics.serve(0)
    try:
        args = observability_args(["--metrics-port", str(server.port)])
        with pytest.raises(ConfigError, match="pick a free --metrics-port"):
            observability.start_metrics(args)
    finally:
        server.close()


def observability_args(argv: list[str]) -> object:
    import argparse

    parser = argparse.ArgumentParser()
    observability.add_arguments(parser)
    return parser.parse_args(argv)


def exposition(registry: object) -> str:
    from prometheus_client import generate_latest

    lines = generate_latest(registry).decode().splitlines()  # type: ignore[arg-type]
    return "\n".join(line for line in lines if "_created" not in line)  # when it was made differs


@pytest.mark.parametrize(
    "values",
    [
        [0.0, 0.5, 0.5, 1.0, 2.5, 1e9, 7.0, 0.001],  # bucket edges, repeats, past the last bound
        [3.0],
        [],
        [1.0, float("nan"), 2.0],  # NaN: in the sum, in no bucket (as observe() does)
        [-1.0, 5.0],
    ],
)
def test_observe_all_gives_the_exposition_of_observing_one_by_one(values: list[float]) -> None:
    from prometheus_client import CollectorRegistry, Histogram

    scrapes = []
    for together in (True, False):
        registry = CollectorRegistry()
        histogram = Histogram("price", "quoted", ["model"], buckets=metrics.PRICE_BUCKETS, registry=registry)
        child = histogram.labels("m")
        if together:
            metrics.observe_all(child, values)
        else:
            for value in values:
                child.observe(value)
        scrapes.append(exposition(registry))
    assert scrapes[0] == scrapes[1]
    assert "price_count" in scrapes[0]


def test_bids_issued_counts_every_bid_and_every_price() -> None:
    bids = metrics.PEER_BIDS.labels("observe-all-model")
    prices = metrics.PEER_QUOTED_PRICE.labels("observe-all-model")
    before_bids, before_sum = bids._value.get(), prices._sum.get()
    metrics.bids_issued("observe-all-model", [0.25, 0.25, 4.0])
    assert bids._value.get() == before_bids + 3
    assert prices._sum.get() == pytest.approx(before_sum + 4.5)
