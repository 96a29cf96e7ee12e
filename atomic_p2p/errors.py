"""Every error atomic-p2p raises, in one tree rooted at :class:`AtomicError`.

    AtomicError
    ├── ProtocolError                 INVALID_ARGUMENT     malformed message or field
    │   ├── TensorError               INVALID_ARGUMENT     bad dtype, shape or byte length
    │   └── TextError                 INVALID_ARGUMENT     a text that is not UTF-8
    ├── SignatureError                UNAUTHENTICATED      missing, forged or mismatched signature
    │   └── PeerIdentityError                              a TLS certificate not bound to the expected peer
    ├── PreconditionError             FAILED_PRECONDITION
    │   ├── UnknownModelError                              no such model / capability here
    │   ├── BidExpiredError                                bid or request past its validity
    │   ├── UnknownTaskError                               report_outcome for a task never run here
    │   ├── StaleRequestError                              issued outside the skew window or before start
    │   └── PlaintextPeerError                             a peer without TLS, and plaintext not allowed
    ├── ReplayError                   ALREADY_EXISTS       request id already seen / task already run
    ├── LimitExceededError            RESOURCE_EXHAUSTED   size, count or rate limit
    │   └── RateLimitedError                               over a rate limit (retry_after_s)
    ├── DeadlineError                 DEADLINE_EXCEEDED    the request's deadline passed
    ├── UnavailableError              UNAVAILABLE          node draining or unreachable
    ├── ExecutionError                INTERNAL             the model raised while running
    ├── UnimplementedError            UNIMPLEMENTED        an RPC this release does not serve yet
    ├── ConfigError                   (local only)         a bad config or key file
    └── AuctionError                  (local only)         a request got no usable bid / result
        └── NoBidsError                                    nobody bid

Each error knows its gRPC status code; the servicer aborts with it in one place
(``atomic_p2p.peer.server``), and the client maps codes back with :func:`from_status`.
"""

from __future__ import annotations

import grpc


class AtomicError(Exception):
    """Base of every atomic-p2p error."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class ProtocolError(AtomicError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class TensorError(ProtocolError):
    pass


class TextError(ProtocolError):
    """A text input that is not valid UTF-8 (the message names which text)."""


class SignatureError(AtomicError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PeerIdentityError(SignatureError):
    """The server at an address did not prove the expected peer id (docs/security.md)."""


class PreconditionError(AtomicError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnknownModelError(PreconditionError):
    pass


class BidExpiredError(PreconditionError):
    pass


class UnknownTaskError(PreconditionError):
    pass


class StaleRequestError(PreconditionError):
    pass


class PlaintextPeerError(PreconditionError):
    """A peer serves (or advertises) plaintext and this side does not allow it (``--insecure``)."""


class ReplayError(AtomicError):
    code = grpc.StatusCode.ALREADY_EXISTS


class LimitExceededError(AtomicError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RateLimitedError(LimitExceededError):
    """Over a rate limit; ``retry_after_s`` says when the next call would pass."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineError(AtomicError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(AtomicError):
    code = grpc.StatusCode.UNAVAILABLE


class ExecutionError(AtomicError):
    code = grpc.StatusCode.INTERNAL


class UnimplementedError(AtomicError):
    code = grpc.StatusCode.UNIMPLEMENTED


class ConfigError(AtomicError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class AuctionError(AtomicError):
    code = grpc.StatusCode.UNAVAILABLE


class NoBidsError(AuctionError):
    pass


class RemoteError(AtomicError):
    """A peer answered with a status code that has no closer local class."""


_BY_CODE: dict[grpc.StatusCode, type[AtomicError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ProtocolError,
    grpc.StatusCode.UNAUTHENTICATED: SignatureError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: LimitExceededError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.INTERNAL: ExecutionError,
    grpc.StatusCode.ALREADY_EXISTS: ReplayError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def from_status(code: grpc.StatusCode, details: str | None) -> AtomicError:
    """Map a gRPC status received from a peer back to the local exception class."""
    cls = _BY_CODE.get(code, RemoteError)
    error = cls(f"{code.name}: {details or 'no details'}")
    if cls is RemoteError:
        error.code = code
    return error


# --- echoing untrusted input -----------------------------------------------------------------------

SHOWN_CHARS = 64
"""How much of an untrusted string a message, a log line or a status text repeats."""
MAX_STATUS_CHARS = 1024
"""The longest status text a peer sends (gRPC clients refuse metadata past 16 KiB)."""


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, saying how long the original was: the
    one way to put untrusted input (a capability, a model id, a name) into a message."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}... ({len(text)} chars)"


def bounded(text: str, limit: int = MAX_STATUS_CHARS) -> str:
    """``text`` cut to ``limit`` characters: what status texts and log lines carry at most."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more chars)"
