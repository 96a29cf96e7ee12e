"""The least a peer can do to answer RequestBids, as plainly as Python and grpc.aio allow: the
floor under the auction round that ``scripts/bench_auction.py`` measures in the same run.

A real peer's RequestBids handler does more than the protocol strictly needs (source limits, fair
shares, strategies, screening against the contract, a bid book for Execute, metrics, journals).
This one keeps only what no answer can skip, each done directly on the generated protobuf
classes:

- parse the call and check the envelope's shape, payload type and Ed25519 signature;
- parse the BidRequest, refuse a stale or replayed one (a bounded set of request ids) and one
  whose deadline has passed;
- sha256 each task's bytes (the bid names the task by them); tasks detached beside the envelope
  (the SDK's form, docs/protocol.md section 3.2) must match the digests the request signs;
- per task: parse the TaskSpec, decode the
  preview's float32 rows and check them finite, run the model on them for its confidence (mean
  max-softmax);
- build each Bid (the fields a requester scores, from a template of the ones that never
  change), serialize it and sign it as an envelope of its own;
- serialize the reply.

It serves over the same kind of server a peer does (grpc.aio, TLS bound to its peer id), and
its bids are real: the requester's own code verifies, binds and scores them
(tests/integration/test_minimal_peer.py). It is not a peer (no Execute, no gossip): a ruler.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc
import numpy as np
import torch
from google.protobuf.message import DecodeError
from nacl.bindings import crypto_sign_open

from atomic_p2p._proto.atomic.v1 import market_pb2
from atomic_p2p.identity import Identity, PeerId, signing_input
from atomic_p2p.tls import TlsCredentials

if TYPE_CHECKING:
    from atomic_p2p.peer.models import HostedModel

# Only the generated messages, the node key and TLS: importing the peer package would count its
# modules in the floor's memory (see idle RSS in bench_auction.py).
SERVICE_NAME = market_pb2.DESCRIPTOR.services_by_name["Peer"].full_name
BID_REQUEST_TYPE = market_pb2.BidRequest.DESCRIPTOR.full_name
BID_TYPE = market_pb2.Bid.DESCRIPTOR.full_name
REPLAY_WINDOW_MS = 30_000
REMEMBERED_REQUESTS = 65_536
BID_VALIDITY_MS = 10_000


@dataclass(frozen=True)
class Offer:
    """What a minimal peer sells: one model and the terms its bids state."""

    module: torch.nn.Module
    model_id: str
    capability: str
    price_per_example: float
    latency_ms: float
    max_batch: int
    cpu_cores: float
    memory_mb: float


def offer_of(model: HostedModel, capability: str) -> Offer:
    """The offer a real peer's hosted model makes, for a minimal peer to make the same."""
    config = model.config
    return Offer(
        model.module,
        model.model_id,
        capability,
        config.price_per_example,
        float(model.expected_latency_ms),
        model.max_batch,
        config.resources.cpu_cores,
        config.resources.memory_mb,
    )


class Answers(Protocol):
    """What :func:`serve` serves: RequestBids bytes in, reply bytes out (``_Refused`` on refusal)."""

    def request_bids(self, raw: bytes) -> bytes: ...


class MinimalPeer:
    """One model, one key: RequestBids bytes in, reply bytes out (``grpc.StatusCode`` on refusal)."""

    def __init__(self, identity: Identity, offer: Offer) -> None:
        self._identity = identity
        self._public_key = identity.public_key
        self._module = offer.module
        self._price = offer.price_per_example
        self._latency_ms = offer.latency_ms
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        template = market_pb2.Bid(
            peer_id=identity.peer_id.raw,
            model_id=offer.model_id,
            capabilities=[offer.capability],
            strategy="confidence",
        )
        template.resource_requirements.cpu_cores = offer.cpu_cores
        template.resource_requirements.memory_mb = offer.memory_mb
        template.constraints.max_batch = offer.max_batch
        self._template = template

    @property
    def peer_id(self) -> PeerId:
        return self._identity.peer_id

    def request_bids(self, raw: bytes) -> bytes:
        try:
            return self._answer(raw)
        except (ValueError, IndexError, DecodeError) as error:  # a misshapen message or preview
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "malformed RequestBids") from error

    def _answer(self, raw: bytes) -> bytes:
        call = market_pb2.RequestBidsRequest.FromString(raw)
        envelope = call.request
        if (
            envelope.payload_type != BID_REQUEST_TYPE
            or len(envelope.public_key) != 32
            or len(envelope.signature) != 64
        ):
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "not a signed BidRequest")
        message = signing_input(BID_REQUEST_TYPE, envelope.payload)
        try:
            crypto_sign_open(envelope.signature + message, envelope.public_key)
        except Exception as error:
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "signature does not verify") from error
        request = market_pb2.BidRequest.FromString(envelope.payload)
        now = time.time_ns() // 1_000_000
        if abs(now - request.issued_at_ms) > REPLAY_WINDOW_MS or request.deadline_ms <= now:
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, "stale or expired BidRequest")
        if request.request_id in self._seen:
            raise _Refused(grpc.StatusCode.ALREADY_EXISTS, "replayed BidRequest")
        self._seen[request.request_id] = now
        if len(self._seen) > REMEMBERED_REQUESTS:
            self._seen.popitem(last=False)
        reply = market_pb2.RequestBidsResponse()
        # Tasks detached beside the envelope (the SDK's form) each match the digest it signs.
        raws = call.tasks if request.task_digests else request.tasks
        digests = [hashlib.sha256(task_bytes).digest() for task_bytes in raws]
        if request.task_digests and (request.tasks or digests != list(request.task_digests)):
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "tasks do not match the signed digests")
        for task_bytes, task_digest in zip(raws, digests, strict=True):
            task = market_pb2.TaskSpec.FromString(task_bytes)
            preview = task.preview[0]
            rows = np.frombuffer(preview.data, dtype=np.float32).reshape(tuple(preview.shape))
            if not np.isfinite(rows).all():
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "preview is not finite")
            with torch.inference_mode():
                logits = self._module(torch.from_numpy(rows.copy()))
                confidence = float(torch.softmax(logits, dim=-1).amax(dim=-1).mean())
            bid = market_pb2.Bid()
            bid.CopyFrom(self._template)
            bid.request_id = request.request_id
            bid.task_id = task.task_id
            bid.task_digest = task_digest
            bid.confidence_score = confidence
            bid.expected_latency_ms = self._latency_ms
            bid.cost_estimate = self._price * rows.shape[0]
            bid.issued_at_ms = now
            bid.valid_until_ms = now + BID_VALIDITY_MS
            payload = bid.SerializeToString()
            signed = reply.outcomes.add().bid
            signed.public_key = self._public_key
            signed.payload_type = BID_TYPE
            signed.payload = payload
            signed.signature = self._identity.sign(BID_TYPE, payload).signature
        return reply.SerializeToString()


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


async def serve(
    peer: Answers, tls: TlsCredentials | None, host: str = "127.0.0.1"
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server answering ``atomic.v1.Peer/RequestBids`` with ``peer``; TLS unless None."""

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return peer.request_bids(raw)
        except _Refused as refused:
            await context.abort(refused.code, refused.details)
            raise

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME, {"RequestBids": grpc.unary_unary_rpc_method_handler(handle)}
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    address = f"{host}:0"
    port = (
        server.add_secure_port(address, tls.server_credentials())
        if tls
        else server.add_insecure_port(address)
    )
    await server.start()
    return server, port


def load(directory: Path, offer: Offer) -> tuple[MinimalPeer, TlsCredentials]:
    """A minimal peer with a node key and TLS credentials kept in ``directory`` (made if absent)."""
    directory.mkdir(parents=True, exist_ok=True)
    identity = Identity.load_or_create(directory / "key.pem")
    return MinimalPeer(identity, offer), TlsCredentials.load_or_create(directory, identity)


def small_digits(weights: Path, hidden: int) -> torch.nn.Module:
    """The small example peer's network (peers/digits.py: Linear 64 -> hidden, ReLU, Linear ->
    10) with its cached weights; ``load_state_dict`` is strict, so a different network fails."""
    module = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    module.load_state_dict(torch.load(weights, weights_only=True)["state"])
    return module.eval()


async def _serve_until_stdin_closes(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    module = small_digits(args.weights, args.hidden)
    with torch.inference_mode():  # warm, as a peer is once it measured its latency
        for _ in range(20):
            module(torch.rand(8, 64))
    offer = Offer(module, "digits-small", "classify/digits", 0.001, 1.0, 256, 0.25, 16.0)
    peer, tls = load(args.data_dir, offer)
    server, port = await serve(peer, tls)
    print(json.dumps([f"{peer.peer_id.hex}@127.0.0.1:{port}"]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    """One minimal peer serving the small digits model over TLS, as a process of its own (the
    floor under an idle peer's memory): prints its address, serves until stdin closes."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--weights", type=Path, required=True, help="a digits-small-*.pt weights file")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--data-dir", type=Path, required=True, help="where its key and TLS files go")
    asyncio.run(_serve_until_stdin_closes(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
