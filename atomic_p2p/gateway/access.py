"""Who may call the gateway, and how often: API keys from a file and a token bucket per key.

How this works
--------------
Pure (the time is passed in). A keys file holds one key per line, optionally followed by that
key's own limit in requests per minute; blank lines and ``#`` comments are skipped::

    # key                          requests/minute (optional; else --rate-limit)
    sk-team-a-5f1c9e2d7b           600
    sk-ci-0a9d3e                   60

Without a keys file the gateway is open (it listens on 127.0.0.1 by default) and the limit
applies per client address. :meth:`Access.admit` checks ``Authorization: Bearer <key>`` (a
:class:`~atomic_p2p.errors.SignatureError`, answered 401) and takes one token from that key's
bucket (a :class:`~atomic_p2p.errors.LimitExceededError`, answered 429, saying when to retry).
A bucket holds a minute's worth of requests and refills continuously.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from atomic_p2p.errors import ConfigError, RateLimitedError, SignatureError

MAX_KEYS = 10_000
MAX_CLIENTS = 10_000  # buckets kept for anonymous clients (the oldest go first)


@dataclass(slots=True)
class Bucket:
    per_minute: float
    tokens: float
    at: float

    def take(self, now: float) -> float:
        """Take one token; 0.0 when taken, else the seconds until one is free."""
        rate = self.per_minute / 60.0
        self.tokens = min(self.per_minute, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


def load_keys(path: Path) -> dict[str, float | None]:
    """Keys and their own limits (None: the default) from a keys file (module docstring)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the API keys file {path}: {error}") from None
    keys: dict[str, float | None] = {}
    for number, line in enumerate(lines, start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2 or len(words[0]) < 8:
            raise ConfigError(
                f"{path}:{number}: a line is a key (8 characters or more) and an optional limit"
            )
        limit = None
        if len(words) == 2:
            try:
                limit = float(words[1])
            except ValueError:
                limit = -1.0
            if not limit > 0:
                raise ConfigError(
                    f"{path}:{number}: a key's limit is a positive number of requests per minute"
                )
        keys[words[0]] = limit
    if not keys or len(keys) > MAX_KEYS:
        raise ConfigError(f"{path} must hold between 1 and {MAX_KEYS} keys")
    return keys


class Access:
    """API keys (optional) and per-key rate limits (``per_minute`` 0: no default limit)."""

    def __init__(self, keys: dict[str, float | None] | None = None, per_minute: float = 0.0) -> None:
        if per_minute < 0:
            raise ConfigError("the rate limit is a non-negative number of requests per minute")
        self._keys = dict(keys) if keys is not None else None
        self._per_minute = per_minute
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()  # oldest first, dropped in O(1)

    @property
    def needs_key(self) -> bool:
        return self._keys is not None

    def admit(self, authorization: str | None, client: str, now: float) -> str:
        """The caller's name for logs (its key's first characters, or its address); raises
        SignatureError without a valid key, LimitExceededError over the limit."""
        who, limit = self._identify(authorization, client)
        if limit:
            bucket = self._buckets.get(who)
            if bucket is None:
                if len(self._buckets) >= MAX_CLIENTS + (len(self._keys) if self._keys else 0):
                    self._buckets.popitem(last=False)
                bucket = self._buckets[who] = Bucket(limit, limit, now)
            wait = bucket.take(now)
            if wait > 0:
                raise RateLimitedError(
                    f"rate limit of {limit:g} requests per minute reached; retry in {wait:.1f} s", wait
                )
        return who if self._keys is None else f"key {who[:6]}..."

    def _identify(self, authorization: str | None, client: str) -> tuple[str, float]:
        if self._keys is None:
            return client, self._per_minute
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise SignatureError("this gateway needs an API key: send 'Authorization: Bearer <key>'")
        for known, limit in self._keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                return known, limit if limit is not None else self._per_minute
        raise SignatureError("the API key is not valid")
