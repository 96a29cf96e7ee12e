"""Keys, peer ids and signed envelopes."""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_p2p.errors import ConfigError, SignatureError
from atomic_p2p.identity import DOMAIN, Envelope, Identity, PeerId, signing_input, verify, verify_many

ALICE = Identity.from_seed(b"alice")
BOB = Identity.from_seed(b"bob")


def test_peer_id_is_sha256_of_raw_public_key() -> None:
    import hashlib

    assert ALICE.peer_id.raw == hashlib.sha256(ALICE.public_key).digest()
    assert len(ALICE.public_key) == 32
    assert PeerId.from_hex(ALICE.peer_id.hex) == ALICE.peer_id
    assert ALICE.peer_id.short == ALICE.peer_id.hex[:8]


def test_signing_input_layout_is_length_prefixed_with_domain() -> None:
    data = signing_input("atomic.v1.Bid", b"xyz")
    expected = (
        struct.pack(">I", len(DOMAIN))
        + DOMAIN
        + struct.pack(">I", 13)
        + b"atomic.v1.Bid"
        + struct.pack(">Q", 3)
    ) + b"xyz"
    assert data == expected


@given(st.binary(min_size=0, max_size=300))
def test_signatures_are_the_rfc8032_ones_openssl_makes(payload: bytes) -> None:
    # Signing goes through libsodium (faster); the bytes must be the ones any Ed25519 makes.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    envelope = ALICE.sign("atomic.v1.Bid", payload)
    expected = ALICE._private.sign(signing_input("atomic.v1.Bid", payload))
    assert envelope.signature == expected
    Ed25519PublicKey.from_public_bytes(ALICE.public_key).verify(
        envelope.signature, signing_input("atomic.v1.Bid", payload)
    )


def test_sign_then_verify_returns_signer() -> None:
    envelope = ALICE.sign("atomic.v1.Bid", b"payload")
    assert verify(envelope, "atomic.v1.Bid") == ALICE.peer_id
    assert verify(envelope, "atomic.v1.Bid", expected_signer=ALICE.peer_id) == ALICE.peer_id


@pytest.mark.parametrize(
    "tamper",
    [
        lambda e: replace(e, payload=e.payload + b"!"),
        lambda e: replace(e, payload_type="atomic.v1.ExecuteResult"),
        lambda e: replace(e, public_key=BOB.public_key),
        lambda e: replace(e, signature=bytes(64)),
        lambda e: replace(e, signature=e.signature[:63]),
        lambda e: replace(e, public_key=b"short"),
    ],
    ids=["payload", "type", "key-swap", "zero-signature", "short-signature", "short-key"],
)
def test_any_tampering_is_rejected(tamper) -> None:  # type: ignore[no-untyped-def]
    envelope = tamper(ALICE.sign("atomic.v1.Bid", b"payload"))
    with pytest.raises(SignatureError):
        verify(envelope, envelope.payload_type or "atomic.v1.Bid")


def test_type_confusion_is_rejected() -> None:
    """A signature made for one payload type never verifies as another (domain separation)."""
    envelope = ALICE.sign("atomic.v1.Bid", b"payload")
    with pytest.raises(SignatureError, match=r"expected a signed atomic\.v1\.ExecuteResult"):
        verify(envelope, "atomic.v1.ExecuteResult")


def test_length_prefix_prevents_boundary_shifting() -> None:
    """Moving bytes between the type and the payload changes the signed input."""
    assert signing_input("atomic.v1.Bi", b"dX") != signing_input("atomic.v1.Bid", b"X")


def test_wrong_expected_signer() -> None:
    envelope = ALICE.sign("atomic.v1.Bid", b"payload")
    with pytest.raises(SignatureError, match="expected"):
        verify(envelope, "atomic.v1.Bid", expected_signer=BOB.peer_id)


def test_verify_many_reports_each_item() -> None:
    good = ALICE.sign("atomic.v1.Bid", b"a")
    bad = replace(BOB.sign("atomic.v1.Bid", b"b"), payload=b"c")
    results = verify_many([(good, "atomic.v1.Bid"), (bad, "atomic.v1.Bid")])
    assert results[0] == ALICE.peer_id
    assert isinstance(results[1], SignatureError)


@given(payload_type=st.text(max_size=40), payload=st.binary(max_size=512))
def test_roundtrip_property(payload_type: str, payload: bytes) -> None:
    envelope = BOB.sign(payload_type, payload)
    assert verify(envelope, payload_type) == BOB.peer_id
    flipped = bytearray(envelope.signature)
    flipped[0] ^= 1
    with pytest.raises(SignatureError):
        verify(Envelope(envelope.public_key, payload_type, payload, bytes(flipped)), payload_type)


def test_key_file_created_with_mode_0600_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.pem"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Identity.load_or_create(path).peer_id == first.peer_id


def test_save_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "node.pem"
    ALICE.save(path)
    with pytest.raises(FileExistsError):
        BOB.save(path)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.pem"
    ALICE.save(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Identity.load(path)


def test_garbage_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.pem"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not a PEM private key"):
        Identity.load(path)


def test_repr_never_shows_key_material() -> None:
    assert "PRIVATE" not in repr(ALICE)
    assert ALICE.peer_id.short in repr(ALICE)


def test_peer_id_length_is_checked() -> None:
    with pytest.raises(SignatureError):
        PeerId(b"123")
