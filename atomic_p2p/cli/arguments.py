"""Argument types shared by every command: each rejects bad values with a message argparse shows."""

from __future__ import annotations

import argparse
import math


def positive(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative number")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text} is not a number in [0, 1]")
    return value


def peer_address(text: str) -> str:
    """``HOST:PORT`` of a peer; a bare ``PORT`` means a peer on this machine (``127.0.0.1:PORT``)."""
    text = text.strip()
    if text.isdigit() and 0 < int(text) <= 65535:
        return f"127.0.0.1:{int(text)}"
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text[:100]!r} is not HOST:PORT (e.g. 127.0.0.1:50051), nor a bare PORT of a peer on this machine"
        )
    return text
