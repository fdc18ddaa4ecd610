"""The development TLS certificate: self-signed ECDSA P-256 for 127.0.0.1/localhost, made once under var/tls/.

Used when `server.tls = true` and no certfile/keyfile are configured. Generation takes a file lock so that
several processes starting at once (two `cloudlayer serve`, a test run) end up with one certificate, and
files are written to a temporary name and renamed so that no reader ever sees half a PEM.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = structlog.get_logger(__name__)

CERT_NAME = "dev-cert.pem"
KEY_NAME = "dev-key.pem"
VALIDITY = dt.timedelta(days=365)
# Regenerate a little before expiry so a long-running dev host never starts with a certificate about to lapse.
RENEW_BEFORE = dt.timedelta(days=7)


def ensure_dev_certificate(var_dir: Path) -> tuple[Path, Path]:
    """Return (certfile, keyfile) of the dev certificate under var_dir/tls, generating it if absent or expiring."""
    tls_dir = Path(var_dir) / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = tls_dir / CERT_NAME, tls_dir / KEY_NAME
    with _exclusive_lock(tls_dir / ".lock"):
        if key_path.exists() and _valid_for_a_while(cert_path):
            return cert_path, key_path
        key_pem, cert_pem = generate_self_signed()
        # Key first: a crash between the two writes leaves no certificate, so the next start regenerates both.
        _write_atomically(key_path, key_pem, 0o600)
        _write_atomically(cert_path, cert_pem, 0o644)
    log.info("dev_certificate_generated", certfile=str(cert_path), valid_days=VALIDITY.days)
    return cert_path, key_path


def generate_self_signed(now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A fresh (key PEM, certificate PEM) pair: ECDSA P-256, SAN 127.0.0.1, ::1 and localhost, one year."""
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CloudLayer development host")])
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))  # tolerate small clock skew on the client
        .not_valid_after(now + VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _valid_for_a_while(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False  # missing or damaged: regenerate
    return cert.not_valid_after_utc - RENEW_BEFORE > dt.datetime.now(dt.UTC)


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)  # the umask may have narrowed or (for 0644) the file may pre-exist with other bits
    os.replace(tmp, path)
