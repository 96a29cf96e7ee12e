"""A peer's strategy history on disk: one JSON line per notice, for ``atomic profile`` to show.

Each line is one :class:`~atomic_p2p.peer.strategies.bidding.HistoryPoint` with the model and
strategy it belongs to::

    {"model_id": "digits-small", "strategy": "learning", "at_ms": 1700000000000,
     "price_multiplier": 0.95, "confidence_offset": -0.02, "wins": 3, "losses": 7}

The file is bounded: once it passes ``max_bytes`` it becomes ``<name>.1`` (replacing the older
one) and a fresh file starts, so about ``2 * max_bytes`` are kept. Lines are flushed as written
but not fsynced: this is observability, not a ledger. :func:`read_journal` reads both files,
oldest first, and skips lines it cannot parse (a torn last line after a crash).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from atomic_p2p.peer.strategies.bidding import HistoryPoint, Strategy

JOURNAL_NAME = "strategy-history.jsonl"
DEFAULT_MAX_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class JournalEntry:
    model_id: str
    strategy: str
    point: HistoryPoint


class StrategyJournal:
    """Appends strategies' latest history points to ``path`` (JSON lines, rotated at ``max_bytes``)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file: IO[str] | None = None

    def append(self, model_id: str, strategy: Strategy) -> None:
        """Write ``strategy``'s newest history point, if it has one."""
        if not strategy.history:
            return
        point = strategy.history[-1]
        line = json.dumps({"model_id": model_id, "strategy": strategy.name, **point.as_dict()})
        file = self._open()
        file.write(line + "\n")
        file.flush()
        if file.tell() >= self.max_bytes:
            self._rotate()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> StrategyJournal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        return self._file

    def _rotate(self) -> None:
        self.close()
        os.replace(self.path, rotated(self.path))


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def read_journal(path: Path) -> list[JournalEntry]:
    """Every entry in ``path`` and its rotated predecessor, oldest first."""
    entries: list[JournalEntry] = []
    for part in (rotated(path), path):
        try:
            text = part.read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            entry = _parse(line)
            if entry is not None:
                entries.append(entry)
    return entries


def _parse(line: str) -> JournalEntry | None:
    try:
        data: Any = json.loads(line)
        point = HistoryPoint(
            at_ms=int(data["at_ms"]),
            price_multiplier=float(data["price_multiplier"]),
            confidence_offset=float(data["confidence_offset"]),
            wins=int(data["wins"]),
            losses=int(data["losses"]),
        )
        return JournalEntry(str(data["model_id"]), str(data["strategy"]), point)
    except (ValueError, KeyError, TypeError):
        return None
