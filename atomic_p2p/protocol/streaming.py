"""Output that travels in pieces over ExecuteStream: tensors cut into slices, and put back together.

How this works (docs/protocol.md section 10)
--------------------------------------------
A peer cuts each output tensor's data into :class:`TensorSlice`s of at most ``SLICE_BYTES``
(:func:`slice_outputs`); the receiver feeds them to a :class:`Reassembly` in arrival order. It
accepts only what the protocol allows: slices of one tensor contiguous from offset 0, with the same
name, dtype and shape, tensors one after another, every tensor within the tensor limits and the
whole output within ``max_bytes``. Its tensors are then exactly the ``WireTensor``s a unary Execute
would have carried, so the signed ``outputs_digest`` is checked the same way.

Generated tokens travel as :class:`TokenChunk`s; :func:`tokens_tensor` is the one tensor their
digest covers (``tokens``, int64, shape ``[n]``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import numpy

from atomic_p2p.errors import LimitExceededError, ProtocolError
from atomic_p2p.identity import Envelope
from atomic_p2p.protocol.codec import encode_slice
from atomic_p2p.protocol.messages import ExecuteChunk, ExecuteReply, TensorSlice, TensorSpec
from atomic_p2p.tensors import DEFAULT_LIMITS, TensorLimits, WireTensor, check_spec, digest_header

SLICE_BYTES = 1024 * 1024  # what a peer puts in one message: well under any gRPC message limit
TOKENS_NAME = "tokens"
OFFLOAD_BYTES = 256 * 1024  # a slice at least this big is copied and hashed off the event loop


def slice_outputs(outputs: Sequence[WireTensor], slice_bytes: int = SLICE_BYTES) -> Iterator[TensorSlice]:
    """Each tensor's data in slices of at most ``slice_bytes``, in order (an empty tensor: one slice)."""
    for wire in outputs:
        size = len(wire.data)
        for offset in range(0, max(size, 1), slice_bytes):
            data = bytes(wire.data[offset : offset + slice_bytes])
            yield TensorSlice(wire.name, wire.dtype, wire.shape, offset, data)


def encoded_slices(outputs: Sequence[WireTensor], slice_bytes: int = SLICE_BYTES) -> Iterator[bytes]:
    """The wire bytes of :func:`slice_outputs`' messages, each slice's data copied only once."""
    for wire in outputs:
        view = memoryview(wire.data)
        for offset in range(0, max(len(view), 1), slice_bytes):
            yield encode_slice(wire.name, wire.dtype, wire.shape, offset, view[offset : offset + slice_bytes])


def tokens_tensor(tokens: Sequence[int]) -> WireTensor:
    """The tensor a generation's ``outputs_digest`` covers: the tokens one peer produced."""
    data = b"".join(int(token).to_bytes(8, "little", signed=True) for token in tokens)
    return WireTensor(TOKENS_NAME, "int64", (len(tokens),), data)


class Reassembly:
    """Output tensors rebuilt from slices in arrival order; see the module docstring.

    Each tensor's memory is allocated once its first slice has passed the limits (its shape within
    the tensor limits, the whole within ``max_bytes``), and each slice is copied into it and
    hashed as it arrives: one copy and one pass of the digest, nothing at the end."""

    def __init__(
        self,
        limits: TensorLimits = DEFAULT_LIMITS,
        max_bytes: int | None = None,
        expected: Sequence[TensorSpec] | None = None,
    ) -> None:
        self._limits = limits
        # Uploaded inputs: only these tensors, each with exactly this dtype and shape.
        self._expected_specs = None if expected is None else {spec.name: spec for spec in expected}
        self._max_bytes = max_bytes if max_bytes is not None else limits.max_bytes * 4
        self._done: list[WireTensor] = []
        self._current: TensorSlice | None = None
        self._buffer = memoryview(bytearray())  # the current tensor's memory, filled in order
        self._filled = 0
        self._expected = 0
        self._total = 0  # bytes of every tensor started so far, at their full size
        self._hasher = hashlib.sha256()  # tensors.digest of what arrives, computed as it arrives

    def add(self, piece: TensorSlice) -> None:
        current = self._current
        if current is None or (piece.name, piece.dtype, piece.shape) != (
            current.name,
            current.dtype,
            current.shape,
        ):
            self._finish_current()
            self._start(piece)
        elif piece.offset != self._filled:
            raise ProtocolError(f"slice of {piece.name[:64]!r} at {piece.offset}, expected {self._filled}")
        self._take(piece)

    def tensors(self) -> tuple[WireTensor, ...]:
        """Every tensor received, each complete (ProtocolError if the last one is not)."""
        self._finish_current()
        return tuple(self._done)

    def digest(self) -> bytes:
        """``tensors.digest(self.tensors())``, without another pass over the data."""
        self._finish_current()
        return self._hasher.copy().digest()

    def _start(self, piece: TensorSlice) -> None:
        if piece.offset != 0:
            raise ProtocolError(f"the first slice of {piece.name[:64]!r} starts at {piece.offset}, not 0")
        if any(wire.name == piece.name for wire in self._done):
            raise ProtocolError(f"output {piece.name[:64]!r} arrives twice")
        if self._expected_specs is not None:
            spec = self._expected_specs.get(piece.name)
            if spec is None or (spec.dtype, tuple(spec.shape)) != (piece.dtype, piece.shape):
                raise ProtocolError(
                    f"input {piece.name[:64]!r} {piece.dtype}{list(piece.shape)[:8]} is not one the bid was for"
                )
        self._expected = check_spec(piece.dtype, piece.shape, self._limits)  # bad or too big: refused
        if self._total + self._expected > self._max_bytes:
            raise LimitExceededError(f"streamed output is over {self._max_bytes} bytes")
        self._total += self._expected
        self._hasher.update(digest_header(piece.name, piece.dtype, piece.shape, self._expected))
        self._current = piece
        # Writable memory, not zeroed (every byte is written before the tensor is complete); the
        # finished tensor is this memory (tensors.decode takes a writable view over, no copy).
        self._buffer = numpy.empty(self._expected, dtype=numpy.uint8).data
        self._filled = 0

    def _take(self, piece: TensorSlice) -> None:
        start, self._filled = self._filled, self._filled + len(piece.data)
        if self._filled > self._expected:
            raise ProtocolError(f"output {piece.name[:64]!r} has more data than its shape holds")
        self._hasher.update(piece.data)
        self._buffer[start : self._filled] = piece.data

    def _finish_current(self) -> None:
        current = self._current
        if current is None:
            return
        if self._filled != self._expected:
            raise ProtocolError(
                f"output {current.name[:64]!r} ended after {self._filled} of {self._expected} bytes"
            )
        self._done.append(WireTensor(current.name, current.dtype, current.shape, self._buffer))
        self._current = None
        self._buffer = memoryview(bytearray())


async def collect_reply(
    chunks: AsyncIterator[ExecuteChunk], limits: TensorLimits = DEFAULT_LIMITS
) -> ExecuteReply:
    """The :class:`ExecuteReply` a sliced ExecuteStream adds up to: its tensors and the signed
    result, which must come last (ProtocolError for tokens, a missing result, or anything after it)."""
    reply, _ = await collect_reply_digest(chunks, limits)
    return reply


async def _inline(add: Callable[[TensorSlice], None], piece: TensorSlice) -> None:
    add(piece)


async def collect_reply_digest(
    chunks: AsyncIterator[ExecuteChunk],
    limits: TensorLimits = DEFAULT_LIMITS,
    run_blocking: Callable[[Callable[[TensorSlice], None], TensorSlice], Awaitable[None]] = _inline,
) -> tuple[ExecuteReply, bytes]:
    """:func:`collect_reply`, and ``tensors.digest`` of its outputs, hashed as the slices arrive.

    ``run_blocking`` runs the copy and hash of each large slice (a worker thread: the next slice
    is received while this one is hashed; one slice at a time, in order)."""
    reassembly = Reassembly(limits)
    pending: asyncio.Future[None] | None = None
    try:
        async for chunk in chunks:
            if pending is not None:
                await pending
                pending = None
            if isinstance(chunk, Envelope):
                return ExecuteReply(chunk, reassembly.tensors()), reassembly.digest()
            if not isinstance(chunk, TensorSlice):
                raise ProtocolError("a tensor stream carried generated tokens")
            if len(chunk.data) >= OFFLOAD_BYTES:
                pending = asyncio.ensure_future(run_blocking(reassembly.add, chunk))
            else:
                reassembly.add(chunk)
    finally:
        if pending is not None:  # the stream failed while a slice was being taken: let it finish
            await asyncio.wait([pending])
            if not pending.cancelled():
                pending.exception()
    raise ProtocolError("the stream ended without a signed result")
