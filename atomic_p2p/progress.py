"""Progress bars for long work (model training, testnet convergence, benchmark rounds), drawn only
on a terminal.

A tqdm bar redraws itself with carriage returns; written to a file or a pipe (CI logs, ``make
bench > out.txt``) that is hundreds of frames of noise. :func:`progress` is the one place every
bar in the project is made, and it draws nothing unless its stream is a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def on_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (a closed or fake stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(
    iterable: Iterable[T] | None = None, *, enabled: bool = True, file: TextIO | None = None, **options: Any
) -> tqdm[T]:
    """A tqdm bar over ``iterable`` (or with ``total=``) on ``file`` (stderr by default), disabled
    unless ``enabled`` and ``file`` is a terminal; ``options`` are tqdm's (``desc``, ``unit``...)."""
    stream = sys.stderr if file is None else file
    return tqdm(iterable, file=stream, disable=not (enabled and on_terminal(stream)), **options)
