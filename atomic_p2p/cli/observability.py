"""Logs and metrics for every long-running command: ``--log-format`` and ``--metrics-port``.

One place, so ``atomic-peer``, ``atomic run``, ``scripts/testnet.py`` and a gateway read the same
flags the same way::

    add_arguments(parser)                                 # --log-format, --metrics-port, --metrics-host
    configure_logging(args.log_level, args.log_format)    # once, before anything logs
    server = start_metrics(args)                          # None unless --metrics-port was given

``--log-format json`` writes one JSON object per line on stderr with stable keys: ``ts`` (UTC, ISO
8601 to the millisecond), ``level``, ``logger``, ``msg`` (the formatted message), ``exc`` (a
traceback, when there is one), and any ``extra={...}`` fields the call passed. Lines a command
prints on stdout for scripts (``atomic-peer ... listening on ...``) stay as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from atomic_p2p.errors import ConfigError

if TYPE_CHECKING:
    from atomic_p2p.metrics import MetricsServer

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_METRICS_HOST = "127.0.0.1"

# Every attribute a LogRecord has of its own; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in event:
                event[key] = value
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            event["exc"] = self.formatStack(record.stack_info)
        return json.dumps(event, default=str, ensure_ascii=False)


def add_arguments(parser: argparse.ArgumentParser, *, metrics: bool = True) -> None:
    """``--log-format`` (and, with ``metrics``, ``--metrics-port`` and ``--metrics-host``)."""
    group = parser.add_argument_group("observability (docs/observability.md)")
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines on stderr as text (default) or one JSON object per line",
    )
    if not metrics:
        return
    group.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port); off by default",
    )
    group.add_argument(
        "--metrics-host",
        default=DEFAULT_METRICS_HOST,
        metavar="HOST",
        help=f"the address the metrics endpoint listens on (default {DEFAULT_METRICS_HOST})",
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0..65535; 0 = any free port)")
    return int(text)


def configure_logging(level: int | str, log_format: str = "text", text_format: str = TEXT_FORMAT) -> None:
    """Send the root logger's records to stderr as text (``text_format``) or JSON lines. Like
    ``logging.basicConfig``, it leaves a root logger that already has handlers alone (a host
    program, or pytest, configured logging first)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=level, handlers=[handler])


def start_metrics(args: argparse.Namespace) -> MetricsServer | None:
    """The metrics endpoint ``--metrics-port`` asks for (None without it); a port that cannot
    be bound is a :class:`ConfigError` that says what to change."""
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    from atomic_p2p import metrics

    host = getattr(args, "metrics_host", DEFAULT_METRICS_HOST)
    try:
        return metrics.serve(port, host)
    except OSError as error:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({error.strerror or error}); pick a free "
            "--metrics-port (0 for any) or another --metrics-host"
        ) from None
