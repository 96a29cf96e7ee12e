"""Exit codes shared by every ``atomic`` subcommand (documented in ``atomic --help``)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the command ran but did not get what it asked for (e.g. the auction failed)
    USAGE = 2  # bad arguments, unreadable input or key file (argparse uses 2 as well)
