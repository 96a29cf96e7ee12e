"""Certificates with a binding extension of the test's choosing (for tamper tests)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from atomic_p2p.tls import BINDING_OID


def with_binding(binding: bytes, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A self-signed certificate (DER) whose binding extension holds ``binding`` as given."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "forged")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(BINDING_OID, binding), False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def binding_of(der: bytes) -> bytes:
    """The raw binding extension value of a certificate (DER)."""
    extension = x509.load_der_x509_certificate(der).extensions.get_extension_for_oid(BINDING_OID).value
    assert isinstance(extension, x509.UnrecognizedExtension)
    return extension.value


def tampered(der: bytes) -> bytes:
    """A certificate for a fresh key carrying ``der``'s binding with one signature bit flipped."""
    binding = bytearray(binding_of(der))
    binding[-1] ^= 1
    return with_binding(bytes(binding))
