"""Certificates bound to peer ids (atomic_p2p.tls): made, checked, kept, and refused in gossip."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from atomic_p2p.channels import ChannelPool
from atomic_p2p.errors import ConfigError, PeerIdentityError, SignatureError
from atomic_p2p.gossip.codec import open_envelope, sign_record
from atomic_p2p.gossip.records import PeerRecord, RecordLimits, Rejection, RejectReason
from atomic_p2p.identity import Identity
from atomic_p2p.tls import (
    CERTIFICATE_NAME,
    KEY_NAME,
    TlsCredentials,
    bound_peer,
    check_peer,
    make_certificate,
    parse_address,
    server_name,
)
from tests.support.forged_tls import binding_of, with_binding

ALICE = Identity.from_seed(b"alice")
MALLORY = Identity.from_seed(b"mallory")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_a_certificate_is_bound_to_its_peer_and_named_for_it() -> None:
    credentials = TlsCredentials.generate(ALICE)
    assert bound_peer(credentials.certificate_der) == ALICE.peer_id
    certificate = x509.load_der_x509_certificate(credentials.certificate_der)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [server_name(ALICE.peer_id)]
    assert len(server_name(ALICE.peer_id).split(".")[0]) <= 63  # one DNS label
    assert "PRIVATE" not in repr(credentials)


def test_a_binding_is_checked_against_the_certificates_own_key() -> None:
    honest = TlsCredentials.generate(ALICE).certificate_der
    # Alice's signed binding, copied into a certificate for another key, binds nothing.
    with pytest.raises(SignatureError, match="does not verify"):
        bound_peer(with_binding(binding_of(honest)))
    tampered = bytearray(binding_of(honest))
    tampered[-1] ^= 1
    with pytest.raises(SignatureError, match="does not verify"):
        bound_peer(with_binding(bytes(tampered)))
    with pytest.raises(SignatureError, match="malformed"):
        bound_peer(with_binding(b"\x04\x02ab"))
    with pytest.raises(SignatureError, match="does not parse"):
        bound_peer(honest[:100])
    with pytest.raises(SignatureError, match="no peer id binding"):
        bound_peer(_plain())


def _plain() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "plain")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now())
        .not_valid_after(now() + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def test_check_peer_names_both_ids_when_the_certificate_is_someone_elses() -> None:
    der = TlsCredentials.generate(MALLORY).certificate_der
    assert check_peer(der, "h:1", frozenset()) == MALLORY.peer_id
    with pytest.raises(PeerIdentityError) as caught:
        check_peer(der, "h:1", frozenset({ALICE.peer_id}))
    assert MALLORY.peer_id.short in str(caught.value) and ALICE.peer_id.short in str(caught.value)
    assert caught.value.code.name == "UNAUTHENTICATED"


def test_credentials_are_kept_next_to_the_key_and_reused(tmp_path: Path) -> None:
    first = TlsCredentials.load_or_create(tmp_path, ALICE)
    assert stat.S_IMODE((tmp_path / KEY_NAME).stat().st_mode) == 0o600
    again = TlsCredentials.load_or_create(tmp_path, ALICE)
    assert again.certificate_der == first.certificate_der and again.private_key_pem == first.private_key_pem
    # another node key: a new certificate bound to it
    other = TlsCredentials.load_or_create(tmp_path, MALLORY)
    assert bound_peer(other.certificate_der) == MALLORY.peer_id
    assert stat.S_IMODE((tmp_path / KEY_NAME).stat().st_mode) == 0o600


def test_a_certificate_close_to_expiry_is_remade(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    old = make_certificate(ALICE, key, now() - datetime.timedelta(days=350))
    TlsCredentials.load_or_create(tmp_path, ALICE)  # creates the files with the right modes
    (tmp_path / KEY_NAME).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / CERTIFICATE_NAME).write_bytes(old.public_bytes(serialization.Encoding.PEM))
    renewed = TlsCredentials.load_or_create(tmp_path, ALICE)
    assert renewed.certificate_der != old.public_bytes(serialization.Encoding.DER)
    expires = x509.load_der_x509_certificate(renewed.certificate_der).not_valid_after_utc
    assert expires - now() > datetime.timedelta(days=300)


def test_a_readable_tls_key_is_refused(tmp_path: Path) -> None:
    TlsCredentials.load_or_create(tmp_path, ALICE)
    (tmp_path / KEY_NAME).chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        TlsCredentials.load_or_create(tmp_path, ALICE)


def test_addresses_may_name_the_peer() -> None:
    assert parse_address("127.0.0.1:5") == ("127.0.0.1:5", None)
    assert parse_address(f"{ALICE.peer_id.hex}@[::1]:5") == ("[::1]:5", ALICE.peer_id)
    for bad in ("abc@h:1", f"{ALICE.peer_id.hex}@", "@h:1"):
        with pytest.raises(ConfigError):
            parse_address(bad)


def _record(identity: Identity, certificate: bytes) -> PeerRecord:
    return PeerRecord(identity.peer_id, ("127.0.0.1:1",), (), 5, 5, tls_certificate=certificate)


def test_gossip_refuses_a_record_whose_certificate_is_not_bound_to_its_signer() -> None:
    limits = RecordLimits()
    honest = TlsCredentials.generate(ALICE).certificate_der
    opened = open_envelope(sign_record(ALICE, _record(ALICE, honest)).envelope, limits)
    assert not isinstance(opened, Rejection) and opened.value.tls_certificate == honest
    assert not isinstance(open_envelope(sign_record(ALICE, _record(ALICE, b"")).envelope, limits), Rejection)
    # Mallory claims Alice's certificate (to have requesters pin it for Mallory's address)
    stolen = open_envelope(sign_record(MALLORY, _record(MALLORY, honest)).envelope, limits)
    assert isinstance(stolen, Rejection) and stolen.reason is RejectReason.BAD_TLS_BINDING
    tampered = bytearray(binding_of(honest))
    tampered[-1] ^= 1
    forged = open_envelope(sign_record(ALICE, _record(ALICE, with_binding(bytes(tampered)))).envelope, limits)
    assert isinstance(forged, Rejection) and forged.reason is RejectReason.BAD_TLS_BINDING
    junk = open_envelope(sign_record(ALICE, _record(ALICE, b"\x30\x03abc")).envelope, limits)
    assert isinstance(junk, Rejection) and junk.reason is RejectReason.BAD_TLS_BINDING


async def test_the_pool_refuses_calls_to_an_address_it_did_not_open() -> None:
    pool = ChannelPool()
    with pytest.raises(RuntimeError, match="not opened"):
        pool.stub("127.0.0.1:1")
    with pytest.raises(PeerIdentityError):  # two different expectations for one address
        await pool.open(f"{ALICE.peer_id.hex}@127.0.0.1:1", MALLORY.peer_id)
    await pool.close()


async def test_a_record_pins_its_certificate_without_asking_and_a_new_one_repins() -> None:
    pool = ChannelPool()
    first, second = (TlsCredentials.generate(ALICE).certificate_der for _ in range(2))
    pool.learn(ALICE.peer_id, ["127.0.0.1:1"], first)
    await pool.open("127.0.0.1:1")  # nothing listens there: the record alone decides
    pin = pool.pin("127.0.0.1:1")
    assert pin is not None and (pin.peer, pin.certificate) == (ALICE.peer_id, first)
    pool.learn(ALICE.peer_id, ["127.0.0.1:1"], second)  # a restart with a new certificate
    await pool.open("127.0.0.1:1")
    pin = pool.pin("127.0.0.1:1")
    assert pin is not None and pin.certificate == second
    await pool.close()
