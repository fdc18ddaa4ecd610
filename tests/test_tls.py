"""The dev certificate: generated once (ECDSA P-256, SANs, key 0600), reused, one result across processes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import multiprocessing
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cloudlayer.tls import ensure_dev_certificate, generate_self_signed


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_generated_on_first_call_with_the_right_shape(tmp_path: Path) -> None:
    cert_path, key_path = ensure_dev_certificate(tmp_path / "var")
    assert cert_path == tmp_path / "var" / "tls" / "dev-cert.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = _load(cert_path)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=365)


def test_reused_afterwards(tmp_path: Path) -> None:
    cert_path, key_path = ensure_dev_certificate(tmp_path)
    cert, key = cert_path.read_bytes(), key_path.read_bytes()
    assert ensure_dev_certificate(tmp_path) == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == (cert, key)


def test_expiring_certificate_is_replaced(tmp_path: Path) -> None:
    cert_path, key_path = ensure_dev_certificate(tmp_path)
    old_key, old_cert = generate_self_signed(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=360))
    cert_path.write_bytes(old_cert)
    key_path.write_bytes(old_key)
    ensure_dev_certificate(tmp_path)
    assert _load(cert_path).not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    assert key_path.read_bytes() != old_key


def test_damaged_certificate_is_replaced(tmp_path: Path) -> None:
    cert_path, _ = ensure_dev_certificate(tmp_path)
    cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\ntruncated")
    ensure_dev_certificate(tmp_path)
    _load(cert_path)


def _ensure_and_read(var_dir: str) -> bytes:
    cert_path, key_path = ensure_dev_certificate(Path(var_dir))
    return cert_path.read_bytes() + key_path.read_bytes()


def test_concurrent_processes_end_up_with_one_certificate(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_ensure_and_read, [str(tmp_path)] * 8))
    assert len(set(results)) == 1
    assert results[0] == _ensure_and_read(str(tmp_path))
