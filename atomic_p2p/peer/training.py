"""Helpers for model factories that train at start (the example peers) and for checkpoints.

- :func:`single_threaded`: small batches are not worth splitting across cores, and idle intra-op
  threads spin for work, so a short training run is faster on one thread, and much faster when the
  machine is busy.
- :func:`save_atomically`: several nodes in one process (tests) may train or checkpoint the same
  file at once; a file is written beside its target and renamed over it, so nobody ever reads half
  of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with one torch intra-op thread, then restore the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def save_atomically(path: Path, payload: Mapping[str, object]) -> None:
    """``torch.save(payload)`` to ``path``, never exposing a partly written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(dict(payload), temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
