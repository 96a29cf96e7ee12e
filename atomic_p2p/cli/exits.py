"""Exit codes shared by every ``atomic`` subcommand (documented in ``atomic --help``), and how a
command ends when whoever reads its output goes away (``atomic bids | head``)."""

from __future__ import annotations

import os
import sys
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the command ran but did not get what it asked for (e.g. the auction failed)
    USAGE = 2  # bad arguments, unreadable input or key file (argparse uses 2 as well)
    CLOSED_PIPE = 141  # stdout's reader closed it: what a shell reports for a process SIGPIPE ended


def closed_pipe() -> int:
    """Stop quietly after stdout's reader has gone: point stdout at /dev/null, so that the
    interpreter's last flush at exit does not raise (and print) a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (an embedding program's)
        pass
    return ExitCode.CLOSED_PIPE
