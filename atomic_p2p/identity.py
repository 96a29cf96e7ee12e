"""Keys, peer ids and signed envelopes: the one place atomic-p2p signs and verifies.

How this works
--------------
Every node owns an Ed25519 key. Its peer id is ``sha256(raw 32-byte public key)``; a record or
bid is trusted for a peer id only when the key that signed it hashes to that id.

A signed object travels as an :class:`Envelope` ``{public_key, payload_type, payload, signature}``.
The signature covers a fixed domain prefix, the payload type and the payload, each length-prefixed
(big-endian), so a signature made for one purpose or one message type can never be replayed as
another::

    u32(len(DOMAIN)) || DOMAIN || u32(len(type)) || type || u64(len(payload)) || payload

**Batches.** One signature may cover many payloads of one type (a peer's bids for one request):
the signer builds a Merkle tree over them (:mod:`atomic_p2p.merkle`) and signs the batch signing
input, the same layout under another domain with ``u32(leaf_count) || root`` as its payload::

    u32(len(BATCH_DOMAIN)) || BATCH_DOMAIN || u32(len(type)) || type || u64(36) || u32(count) || root

Each payload then travels in its own envelope, with that one signature and a :class:`BatchProof`
(its index and Merkle path). A verifier rebuilds the root from the payload and the path and checks
the signature over it; :func:`verify_many` checks each distinct signature once, so a batch costs
one Ed25519 verification however many payloads it holds. The two domains keep a batch signature
from ever passing as a single one, and the other way round.

Verification checks the bytes exactly as received and only then lets the caller parse them; a
message is never re-serialized to be checked (protobuf encoding is not canonical across
implementations). docs/protocol.md states the same rule for implementers in other languages.

Key files are PKCS#8 PEM, created with mode 0600 and refused when group or others can read them.

Two libraries, one job each: ``cryptography`` owns keys (generation, PEM files) and signing;
verification goes through libsodium (PyNaCl), measured at about 2x the verifications per second
of OpenSSL's Ed25519 here (scripts/bench_auction.py prints the rate). libsodium also refuses
non-canonical signatures and small-order keys, which closes malleability tricks.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError

from atomic_p2p import merkle
from atomic_p2p.errors import ConfigError, SignatureError
from atomic_p2p.frozen import quick_init

DOMAIN = b"atomic-p2p/envelope/v1"
BATCH_DOMAIN = b"atomic-p2p/batch/v1"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_PAYLOAD_TYPE_BYTES = 128


@dataclass(frozen=True, slots=True, order=True)
class PeerId:
    """sha256 of a peer's raw Ed25519 public key."""

    raw: bytes
    # Spelled once: profiles, shares and load maps key every bid's peer by it.
    _hex: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise SignatureError(f"a peer id is 32 bytes, got {len(self.raw)}")
        object.__setattr__(self, "_hex", self.raw.hex())

    @classmethod
    def from_public_key(cls, public_key: bytes) -> PeerId:
        return cls(hashlib.sha256(public_key).digest())

    @classmethod
    def from_hex(cls, text: str) -> PeerId:
        return cls(bytes.fromhex(text))

    @property
    def hex(self) -> str:
        return self._hex

    @property
    def short(self) -> str:
        """First 8 hex digits, for tables and logs."""
        return self._hex[:8]

    def __str__(self) -> str:
        return self._hex


@quick_init
@dataclass(frozen=True, slots=True)
class BatchProof:
    """Where an envelope's payload sits in a batch signed once: leaf ``leaf_index`` of
    ``leaf_count``, and the Merkle inclusion proof (sibling hashes, leaf to root)."""

    leaf_count: int
    leaf_index: int
    path: tuple[bytes, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class Envelope:
    """A signed payload, as it travels (see the module docstring for what is signed).

    ``batch`` is set when ``signature`` covers a batch of payloads (a Merkle root) that holds
    this one, rather than this payload alone."""

    public_key: bytes
    payload_type: str
    payload: bytes
    signature: bytes
    batch: BatchProof | None = None

    @property
    def signer(self) -> PeerId:
        return PeerId.from_public_key(self.public_key)

    @property
    def digest(self) -> bytes:
        """sha256 of the payload bytes: how bids and results refer to each other."""
        return hashlib.sha256(self.payload).digest()


def signing_input(payload_type: str, payload: bytes, domain: bytes = DOMAIN) -> bytes:
    """The exact bytes an envelope signature covers (``BATCH_DOMAIN``: a batch's, see
    :func:`batch_signing_input`)."""
    type_bytes = payload_type.encode()
    return b"".join(
        (
            struct.pack(">I", len(domain)),
            domain,
            struct.pack(">I", len(type_bytes)),
            type_bytes,
            struct.pack(">Q", len(payload)),
            payload,
        )
    )


def batch_signing_input(payload_type: str, leaf_count: int, root: bytes) -> bytes:
    """The exact bytes a batch signature covers: the root of ``leaf_count`` payloads of one type."""
    return signing_input(payload_type, struct.pack(">I", leaf_count) + root, BATCH_DOMAIN)


def signed_message(envelope: Envelope) -> bytes:
    """What ``envelope.signature`` must verify over: its own signing input, or for a batched
    payload the batch signing input of the root its proof leads to (SignatureError for a
    proof that cannot be one)."""
    proof = envelope.batch
    if proof is None:
        return signing_input(envelope.payload_type, envelope.payload)
    root = merkle.root_from_proof(envelope.payload, proof.leaf_index, proof.leaf_count, proof.path)
    return batch_signing_input(envelope.payload_type, proof.leaf_count, root)


class Identity:
    """A node's Ed25519 key pair."""

    __slots__ = ("_private", "_secret", "peer_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id = PeerId.from_public_key(self.public_key)
        # libsodium signs in ~20 us where OpenSSL's Ed25519 takes ~50 us (signatures are the
        # same bytes: Ed25519 is deterministic); cryptography keeps the key's PEM file format.
        seed = private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public_key, self._secret = crypto_sign_seed_keypair(seed)
        if public_key != self.public_key:
            raise ConfigError("libsodium derived another public key from this Ed25519 key")

    def __repr__(self) -> str:  # never print key material
        return f"Identity(peer_id={self.peer_id.short}…)"

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic key from a 32-byte seed (tests and simulations only)."""
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))

    @classmethod
    def load(cls, path: Path) -> Identity:
        path = Path(path)
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"key file {path} is readable by others (mode {oct(mode & 0o777)}); run: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as exc:
            raise ConfigError(f"key file {path} is not a PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        path = Path(path)
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM with mode 0600 (created so, never widened)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)

    def sign(self, payload_type: str, payload: bytes) -> Envelope:
        signature = self._sign(signing_input(payload_type, payload))
        return Envelope(self.public_key, payload_type, payload, signature)

    def _sign(self, message: bytes) -> bytes:
        return crypto_sign(message, self._secret)[:SIGNATURE_BYTES]  # signature, then the message

    def sign_batch(self, payload_type: str, payloads: list[bytes]) -> list[Envelope]:
        """One envelope per payload, all under one signature over their Merkle root."""
        root, proofs = merkle.tree(payloads)
        count = len(payloads)
        signature = self._sign(batch_signing_input(payload_type, count, root))
        return [
            Envelope(self.public_key, payload_type, payload, signature, BatchProof(count, index, proof))
            for index, (payload, proof) in enumerate(zip(payloads, proofs, strict=True))
        ]


def verify(envelope: Envelope, expected_type: str, expected_signer: PeerId | None = None) -> PeerId:
    """Check an envelope and return its signer's peer id, or raise :class:`SignatureError`.

    Checks, in order: sizes, the payload type, the signature over the bytes as received (for a
    batched payload: over the root its proof leads to), and (when given) that the signer is the
    expected peer.
    """
    _check_shape(envelope, expected_type)
    _check_signature(envelope.public_key, envelope.signature, signed_message(envelope), expected_type)
    signer = envelope.signer
    if expected_signer is not None and signer != expected_signer:
        raise SignatureError(f"{expected_type} signed by {signer.short}, expected {expected_signer.short}")
    return signer


def _check_shape(envelope: Envelope, expected_type: str) -> None:
    if len(envelope.public_key) != PUBLIC_KEY_BYTES:
        raise SignatureError(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(envelope.public_key)}")
    if len(envelope.signature) != SIGNATURE_BYTES:
        raise SignatureError(f"signature must be {SIGNATURE_BYTES} bytes, got {len(envelope.signature)}")
    if envelope.payload_type != expected_type:
        raise SignatureError(f"expected a signed {expected_type}, got {envelope.payload_type or 'nothing'}")


def _check_signature(public_key: bytes, signature: bytes, message: bytes, what: str) -> None:
    try:
        crypto_sign_open(signature + message, public_key)
    except (BadSignatureError, NaclValueError) as exc:
        raise SignatureError(f"signature on {what} does not verify") from exc


def verify_many(items: list[tuple[Envelope, str]]) -> list[PeerId | SignatureError]:
    """Verify a batch (meant to run in a worker thread: Ed25519 verification releases the GIL).

    Envelopes of one signed batch share their signature and, when their proofs hold, the message
    it covers: each distinct (key, signature, message) is verified once, so a peer's batch of
    bids costs one Ed25519 verification. When every leaf of a batch is here (a peer's whole
    answer), its tree is rebuilt once (2n - 1 hashes, not n log n) and each proof must be the
    one the tree gives: the same envelopes pass and fail as one by one."""
    results: list[PeerId | SignatureError | None] = [None] * len(items)
    verified: set[tuple[bytes, bytes, bytes]] = set()
    for indices, message in _whole_batches(items):
        envelope, expected_type = items[indices[0]]
        key = (envelope.public_key, envelope.signature, message)
        try:
            if key not in verified:
                _check_signature(envelope.public_key, envelope.signature, message, expected_type)
                verified.add(key)
        except SignatureError as exc:
            for index in indices:
                results[index] = exc
        else:
            signer = envelope.signer  # one hash of the key for the whole batch
            for index in indices:
                results[index] = signer
    for position, (envelope, expected_type) in enumerate(items):
        if results[position] is not None:
            continue
        try:
            if envelope.batch is None:
                results[position] = verify(envelope, expected_type)
                continue
            _check_shape(envelope, expected_type)
            message = signed_message(envelope)
            key = (envelope.public_key, envelope.signature, message)
            if key not in verified:
                _check_signature(envelope.public_key, envelope.signature, message, expected_type)
                verified.add(key)
            results[position] = envelope.signer
        except SignatureError as exc:
            results[position] = exc
    return [result for result in results if result is not None]


def _whole_batches(items: list[tuple[Envelope, str]]) -> list[tuple[list[int], bytes]]:
    """The batches whose every leaf is among ``items``, once each and with the proofs their tree
    gives, well formed: (positions in ``items``, the message their signature must cover)."""
    groups: dict[tuple[bytes, bytes, str, int], dict[int, int]] = {}
    for position, (envelope, expected_type) in enumerate(items):
        proof = envelope.batch
        if proof is None or envelope.payload_type != expected_type:
            continue
        group = groups.setdefault(
            (envelope.public_key, envelope.signature, expected_type, proof.leaf_count), {}
        )
        group.setdefault(proof.leaf_index, position)  # a repeated leaf goes the one-by-one way
    whole = []
    for (public_key, signature, payload_type, count), leaves in groups.items():
        if len(leaves) != count or count < 2 or len(public_key) != PUBLIC_KEY_BYTES:
            continue
        if len(signature) != SIGNATURE_BYTES or set(leaves) != set(range(count)):
            continue
        positions = [leaves[index] for index in range(count)]
        root, proofs = merkle.tree([items[position][0].payload for position in positions])
        fits = all(
            cast(BatchProof, items[position][0].batch).path == proof
            for position, proof in zip(positions, proofs, strict=True)
        )
        if fits:
            whole.append((positions, batch_signing_input(payload_type, count, root)))
    return whole
