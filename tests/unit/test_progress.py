"""Progress bars draw on a terminal only, and every bar in the project is made by one helper."""

from __future__ import annotations

import io
import re
from pathlib import Path

from atomic_p2p.progress import progress

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_writes_nothing_into_a_file_or_pipe() -> None:
    log = io.StringIO()
    assert sum(progress(range(50), desc="training", file=log)) == sum(range(50))
    assert log.getvalue() == ""


def test_a_bar_draws_on_a_terminal_unless_disabled() -> None:
    terminal = Terminal()
    list(progress(range(3), desc="training", file=terminal))
    assert "training" in terminal.getvalue() and "\r" in terminal.getvalue()
    quiet = Terminal()
    list(progress(range(3), desc="training", file=quiet, enabled=False))
    assert quiet.getvalue() == ""


def test_no_code_makes_a_tqdm_bar_except_through_the_helper() -> None:
    made_here = re.compile(r"\btqdm\(")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("atomic_p2p", "peers", "scripts")
        for path in (ROOT / folder).rglob("*.py")
        if path != ROOT / "atomic_p2p" / "progress.py" and made_here.search(path.read_text())
    ]
    assert offenders == []
