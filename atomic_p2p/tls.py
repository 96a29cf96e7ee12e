"""TLS certificates bound to peer ids: what makes a connection to an address prove a peer id.

How this works
--------------
grpcio takes no custom certificate verifier in Python (grpc/grpc#32635), so the check that
libp2p's TLS handshake does in its verifier is done here, before the channel opens, and the
handshake is left to prove the rest (docs/architecture.md section 15, docs/security.md):

1. Every node makes a TLS key (ECDSA P-256) and a self-signed certificate for it, and puts in
   that certificate a *binding*: its Ed25519 public key and an envelope signature
   (:meth:`~atomic_p2p.identity.Identity.sign`, payload type :data:`BINDING_TYPE`) over the
   certificate's SubjectPublicKeyInfo. As in libp2p, the certificate itself is then enough to learn
   the peer id it speaks for; nobody else can make one for that peer id.
2. The certificate travels in the node's signed gossip record (``PeerRecord.tls_certificate``),
   and a record whose certificate is not bound to the record's own peer id is refused.
3. A client checks the binding and then *pins* the certificate: it becomes the channel's only
   root certificate, with the target name set to the name in the certificate. The TLS handshake
   then succeeds only if the server holds that certificate's private key, so the connection is
   proven to belong to the peer id. A client that knows only an address (a bootstrap seed, a
   ``--peer``) first fetches the certificate with an unverified handshake (:func:`fetch_certificate`),
   checks its binding against the expected peer id (``PEERID@host:port``) or, without one, trusts
   it on first use and logs so.

The server does not ask for client certificates (grpcio cannot check them either); the requester's
identity stays in its signed orders and a gossiper's in its signed record.

Key and certificate live next to the node key: ``tls-key.pem`` (mode 0600) and ``tls-cert.pem``.
They are reused across restarts and remade when the node key changed or less than
:data:`RENEW_BEFORE` of validity is left; a new certificate means a new signed record.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import os
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from atomic_p2p.errors import (
    ConfigError,
    PeerIdentityError,
    PlaintextPeerError,
    SignatureError,
    UnavailableError,
)
from atomic_p2p.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Envelope, Identity, PeerId, verify

BINDING_TYPE = "atomic-p2p/tls-binding/v1"
# An OID of our own without a registry: 2.25 is the arc for UUIDs (ITU-T X.667).
BINDING_OID = x509.ObjectIdentifier("2.25." + str(uuid.UUID("0b5e3a52-7d7f-4a8e-9c43-6f1d2a9e5b10").int))
VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)
CLOCK_SKEW = datetime.timedelta(hours=1)  # not_before lies this far back, for peers whose clocks lag
MAX_CERTIFICATE_BYTES = 4096
KEY_NAME = "tls-key.pem"
CERTIFICATE_NAME = "tls-cert.pem"
NAME_SUFFIX = ".peer.atomic-p2p"


def server_name(peer_id: PeerId) -> str:
    """The DNS name in a peer's certificate, and the target name a client expects: the peer id in
    lowercase base32 (52 characters, one DNS label)."""
    return base64.b32encode(peer_id.raw).decode().rstrip("=").lower() + NAME_SUFFIX


def parse_address(text: str) -> tuple[str, PeerId | None]:
    """``"PEERID@host:port"`` -> (``"host:port"``, the peer id); ``"host:port"`` -> (it, None)."""
    if "@" not in text:
        return text, None
    peer, _, address = text.partition("@")
    try:
        peer_id = PeerId.from_hex(peer)
    except (ValueError, SignatureError):
        raise ConfigError(f"{text[:200]!r}: before '@' must be a 64-hex-digit peer id") from None
    if not address:
        raise ConfigError(f"{text[:200]!r}: no host:port after the peer id")
    return address, peer_id


# --- the binding ------------------------------------------------------------------------------


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def bound_peer(der: bytes) -> PeerId:
    """The peer id a certificate (DER) is bound to; :class:`SignatureError` when it has no valid
    binding. Checks the size, that it parses, and the Ed25519 signature over its public key."""
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise SignatureError(f"TLS certificate of {len(der)} bytes, over {MAX_CERTIFICATE_BYTES}")
    try:
        certificate = x509.load_der_x509_certificate(der)
        extension = certificate.extensions.get_extension_for_oid(BINDING_OID).value
        spki = _spki(certificate)
    except x509.ExtensionNotFound:
        raise SignatureError("TLS certificate carries no peer id binding") from None
    except ValueError as exc:
        raise SignatureError(f"TLS certificate does not parse: {str(exc)[:200]}") from None
    raw = extension.value if isinstance(extension, x509.UnrecognizedExtension) else b""
    # DER OCTET STRING: 0x04, length 96, then public key and signature
    if len(raw) != 2 + PUBLIC_KEY_BYTES + SIGNATURE_BYTES or raw[:2] != b"\x04\x60":
        raise SignatureError("TLS certificate binding is malformed")
    public_key, signature = raw[2 : 2 + PUBLIC_KEY_BYTES], raw[2 + PUBLIC_KEY_BYTES :]
    try:
        return verify(Envelope(public_key, BINDING_TYPE, spki, signature), BINDING_TYPE)
    except SignatureError:
        raise SignatureError("TLS certificate binding does not verify") from None


def _binding_extension(identity: Identity, tls_key: ec.EllipticCurvePrivateKey) -> x509.UnrecognizedExtension:
    spki = tls_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    envelope = identity.sign(BINDING_TYPE, spki)
    return x509.UnrecognizedExtension(BINDING_OID, b"\x04\x60" + envelope.public_key + envelope.signature)


def make_certificate(
    identity: Identity, tls_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> x509.Certificate:
    """A self-signed certificate for ``tls_key``, named for and bound to ``identity``'s peer id."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"atomic-p2p peer {identity.peer_id.short}")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name(identity.peer_id))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_binding_extension(identity, tls_key), False)  # non-critical: TLS stacks skip it
        .sign(tls_key, hashes.SHA256())
    )


# --- a node's own key and certificate ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsCredentials:
    """A node's TLS key and its bound certificate (PEM), ready for a gRPC server."""

    private_key_pem: bytes
    certificate_pem: bytes
    certificate_der: bytes
    peer_id: PeerId

    def __repr__(self) -> str:  # never print key material
        return f"TlsCredentials(peer_id={self.peer_id.short}…)"

    @classmethod
    def generate(cls, identity: Identity, now: datetime.datetime | None = None) -> TlsCredentials:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = make_certificate(identity, key, now or _utcnow())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(
            key_pem,
            certificate.public_bytes(serialization.Encoding.PEM),
            certificate.public_bytes(serialization.Encoding.DER),
            identity.peer_id,
        )

    @classmethod
    def load_or_create(cls, directory: Path, identity: Identity) -> TlsCredentials:
        """The key and certificate kept in ``directory``, remade (and saved) when missing, bound
        to another identity, or within :data:`RENEW_BEFORE` of expiring."""
        key_path, certificate_path = Path(directory) / KEY_NAME, Path(directory) / CERTIFICATE_NAME
        if key_path.exists() and certificate_path.exists():
            loaded = cls._load(key_path, certificate_path, identity)
            if loaded is not None:
                return loaded
        credentials = cls.generate(identity)
        _write_atomically(key_path, credentials.private_key_pem)
        _write_atomically(certificate_path, credentials.certificate_pem, mode=0o644)
        return credentials

    @classmethod
    def _load(cls, key_path: Path, certificate_path: Path, identity: Identity) -> TlsCredentials | None:
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"TLS key file {key_path} is readable by others (mode {oct(mode)}); chmod 600 it"
            )
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{key_path} or {certificate_path} does not parse: {exc}") from exc
        der = certificate.public_bytes(serialization.Encoding.DER)
        try:
            bound = bound_peer(der)
        except SignatureError:
            return None
        same_key = _spki(certificate) == key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fresh = certificate.not_valid_after_utc - _utcnow() > RENEW_BEFORE
        if bound != identity.peer_id or not same_key or not fresh:
            return None
        return cls(key_path.read_bytes(), certificate_path.read_bytes(), der, bound)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key_pem, self.certificate_pem)])


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` atomically with a file created with ``mode`` (never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- a client's side --------------------------------------------------------------------------


def pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def channel_credentials(der: bytes) -> grpc.ChannelCredentials:
    """Credentials that trust this one certificate and nothing else (the pin)."""
    return grpc.ssl_channel_credentials(root_certificates=pem(der))


def check_peer(der: bytes, address: str, expected: frozenset[PeerId]) -> PeerId:
    """The peer id ``der`` is bound to, when it is one of ``expected`` (any, when empty);
    :class:`PeerIdentityError` otherwise."""
    try:
        peer = bound_peer(der)
    except SignatureError as exc:
        raise PeerIdentityError(
            f"{address} presented a TLS certificate without a valid binding: {exc}"
        ) from None
    if expected and peer not in expected:
        wanted = ", ".join(sorted(p.short for p in expected))
        raise PeerIdentityError(
            f"{address} presented a TLS certificate bound to peer {peer.short}, expected {wanted}"
        )
    return peer


@functools.cache
def _probe_context() -> ssl.SSLContext:
    """A client context that checks nothing (the binding is checked instead) and loads no CA store
    (loading the system's took most of a first contact's time)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


async def fetch_certificate(address: str, timeout_s: float) -> bytes:
    """The certificate the server at ``host:port`` presents, from a handshake that checks
    nothing (the caller checks the binding). :class:`PlaintextPeerError` when the server does not
    speak TLS, :class:`UnavailableError` when it cannot be reached in time."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = _probe_context()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=context, server_hostname=None), timeout_s
        )
    except ssl.SSLError as exc:
        raise PlaintextPeerError(f"{address} does not speak TLS ({exc.reason or exc})") from None
    except (OSError, TimeoutError, ValueError) as exc:
        raise UnavailableError(f"cannot reach {address}: {exc or type(exc).__name__}") from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        writer.transport.abort()  # no TLS close_notify exchange: it only waits on the server
    if not der:
        raise PeerIdentityError(f"{address} presented no TLS certificate")
    return bytes(der)
