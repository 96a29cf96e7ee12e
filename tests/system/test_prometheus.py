"""A real Prometheus server scrapes a small testnet and answers a query over each family of metrics.

``scripts/testnet.py`` starts two ``atomic-peer`` processes (a digits classifier and a language
model) and its requester with ``--metrics-port 0``, runs its workload (digit auctions
and a streamed generation), then stays up. Prometheus (Debian's ``prometheus`` package, which
``make test`` installs, scripts/install_prometheus.sh) scrapes every endpoint each second from a generated config; the test asks
its HTTP API for every family in docs/observability.md: a value where the workload made one, the
family's metadata where it did not (fallbacks, gradient updates, refused gossip records).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peers.examples import weights_cache_dir

pytestmark = [pytest.mark.system, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 150.0
SCRAPE_TIMEOUT_S = 30.0

# Families with a value after the workload: PromQL -> the least value the query must reach.
VALUES = {
    'sum(atomic_rpc_server_handled_total{method="RequestBids",code="OK"})': 1,
    'sum(atomic_rpc_server_handling_seconds_count{method="Execute"})': 1,
    'sum(atomic_rpc_client_handled_total{method="RequestBids",code="OK"})': 1,
    "sum(atomic_requester_auction_round_seconds_count)": 1,
    'sum(atomic_requester_auction_round_seconds_bucket{le="+Inf"})': 1,
    "sum(atomic_peer_bids_total)": 1,
    "sum(atomic_requester_bids_received_total)": 1,
    'sum(atomic_peer_auction_results_total{result="win"})': 1,
    'sum(atomic_requester_tasks_total{outcome="delivered"})': 1,
    "sum(atomic_peer_execution_seconds_count)": 1,
    'sum(atomic_requester_executions_total{code="OK"})': 1,
    "sum(atomic_requester_time_to_first_token_seconds_count)": 1,
    'min(atomic_gossip_members{state="alive"})': 1,
    "sum(atomic_peer_workers)": 2,
    "sum(atomic_peer_bid_book_capacity)": 1,
    "sum(atomic_peer_queue_capacity)": 1,
    "count(atomic_requester_requests_running)": 1,
    "sum(atomic_peer_quoted_price_count)": 1,
    "sum(atomic_requester_quoted_price_count)": 1,
    "sum(atomic_requester_price_paid_count)": 1,
}
# Families the workload need not touch: Prometheus must still know them from the scrapes.
DECLARED = (
    "atomic_peer_no_bids_total",
    "atomic_requester_no_bids_total",
    "atomic_requester_fallbacks_total",
    "atomic_peer_gradient_updates_total",
    "atomic_gossip_records_refused_total",
    "atomic_peer_queue_waiting",
    "atomic_peer_workers_busy",
    "atomic_peer_bid_book_bids",
    "atomic_requester_requests_waiting",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


@contextlib.contextmanager
def started(command: list[str], **options: Any) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(command, text=True, start_new_session=True, **options)
    try:
        yield process
    finally:
        if process.stdout is not None:
            process.stdout.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the testnet stops its peers on SIGTERM
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def read_testnet(process: subprocess.Popen[str]) -> list[str]:
    """The metrics URLs the testnet printed, once its workload is done and the network stays up."""
    assert process.stdout is not None
    urls: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    for line in process.stdout:
        if line.startswith("requester metrics on ") or (line.startswith("peer ") and " metrics http" in line):
            urls.append(line.split()[-1])
        if line.startswith("the network stays up"):
            return urls
        assert time.monotonic() < deadline, "the testnet did not finish its workload in time"
    raise AssertionError(f"the testnet exited with {process.wait()} before staying up")


def test_prometheus_scrapes_a_testnet_and_answers_each_family(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip(
            "no prometheus on PATH: make test installs Debian's package as root (scripts/install_prometheus.sh), else apt-get install prometheus"
        )
    testnet = [
        sys.executable, str(ROOT / "scripts" / "testnet.py"),
        "--peers", "2", "--configs", "small", "lm-small",
        "--requests", "2", "--batch", "4", "--quiet",
        "--data-dir", str(tmp_path / "net"), "--cache-dir", str(weights_cache_dir()),
        "--metrics-port", "0", "--stay", "inf",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (
        (tmp_path / "testnet.log").open("w") as log,
        started(testnet, stdout=subprocess.PIPE, stderr=log, env=env) as net,
    ):
        urls = read_testnet(net)
        assert len(urls) == 3, urls  # the requester and two peers
        targets = [urllib.parse.urlsplit(url).netloc for url in urls]
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: atomic\n"
            f"    static_configs:\n      - targets: {json.dumps(targets)}\n"
        )
        server = [
            prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ]  # fmt: skip
        with started(server, stdout=log, stderr=log):
            base = f"http://127.0.0.1:{port}"
            wait_for_scrapes(base, len(targets))
            for query, least in VALUES.items():
                result = api(base, "/api/v1/query", query=query)["result"]
                assert result, f"no series for {query}"
                assert float(result[0]["value"][1]) >= least, (query, result)
            known = api(base, "/api/v1/metadata")
            for family in DECLARED:
                name = family.removesuffix("_total")
                assert family in known or name in known, f"Prometheus does not know {family}"


def wait_for_scrapes(base: str, targets: int) -> None:
    """Until every target was scraped healthy at least twice (a rate needs two points)."""
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            up = api(base, "/api/v1/query", query="count_over_time(up[1m]) >= 2 and up == 1")["result"]
            if len(up) == targets:
                return
        time.sleep(0.5)
    health = api(base, "/api/v1/targets")["activeTargets"]
    raise AssertionError(f"targets not all up in time: {[(t['scrapeUrl'], t['health']) for t in health]}")
