"""Plain-text tables and numbers for the commands that print stored records (``atomic bids``,
``atomic profile``). Imports nothing heavy, so those commands start fast."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """Left-aligned columns (``right``: indexes of right-aligned ones), two spaces apart, indented."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  " + "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def clock(at_ms: int | float | None) -> str:
    """Unix milliseconds as UTC, to the millisecond: ``2025-01-31 12:00:00.250Z``."""
    if at_ms is None:
        return "-"
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def number(value: object, digits: int = 3) -> str:
    """A float to ``digits`` decimals; "-" for None or anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.{digits}f}"


def short(peer: str | None) -> str:
    """The first 8 hex digits of a peer id (what ``PeerId.short`` prints); "-" for none."""
    return peer[:8] if peer else "-"
