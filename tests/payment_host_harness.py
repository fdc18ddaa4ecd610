"""The payment host for tests: `cloudlayer simulator --http-bind` as a real subprocess (HTTPS with a trustme CA,
optionally mutual TLS), OAuth clients for each authentication method with their secrets and keys in files,
and the `[acquirer]` keys that point a `txn_harness.Host` at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from txn_harness import SimulatorProcess, free_port

# Characters that RFC 6749 2.3.1's form-encoding must carry through client_secret_basic.
SECRET = "s3cr:et+with%odd&chars= and/slash"
METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


class PaymentHostFiles:
    """Certificates, the client secret and the client's key pair, as files (the way production reads them)."""

    def __init__(self, directory: Path, *, mutual_tls: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        ca = trustme.CA()
        self.ca = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert, self.server_key = directory / "server-cert.pem", directory / "server-key.pem"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        self.mutual_tls = mutual_tls
        client = ca.issue_cert("cloudlayer-client.example")
        self.client_cert, self.client_key = directory / "client-cert.pem", directory / "client-key.pem"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        self.secret = directory / "client-secret"
        self.secret.write_text(SECRET + "\n")
        self.private_key, self.public_key = self.key_pair("assertion")
        self.other_private_key, _ = self.key_pair("stranger")  # a key the host does not know
        self.wrong_secret = directory / "wrong-secret"
        self.wrong_secret.write_text("not-the-secret\n")

    def key_pair(self, name: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        private, public = self.dir / f"{name}-key.pem", self.dir / f"{name}-pub.pem"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return private, public

    def simulator_toml(self, *, token_lifetime: int = 300) -> str:
        lines = [
            "",
            "[simulator.http]",
            f'certfile = "{self.server_cert}"',
            f'keyfile = "{self.server_key}"',
            f"token_lifetime = {token_lifetime}",
        ]
        if self.mutual_tls:
            lines.append(f'client_ca = "{self.ca}"')
        lines += [
            "",
            "[[simulator.http.clients]]",
            'client_id = "cloudlayer"',
            f'secret_file = "{self.secret}"',
            f'public_key_file = "{self.public_key}"',
            "",
        ]
        return "\n".join(lines)


class PaymentHostProcess(SimulatorProcess):
    """The simulator with its HTTPS payment host on an ephemeral port (the ISO side runs too, as always)."""

    def __init__(
        self,
        workdir: Path,
        files: PaymentHostFiles,
        *,
        latency_ms: int = 0,
        token_lifetime: int = 300,
        port: int | None = None,
        http_port: int | None = None,
    ) -> None:
        self.files = files
        self.http_port = http_port or free_port()
        super().__init__(
            workdir,
            latency_ms=latency_ms,
            port=port,
            extra_toml=files.simulator_toml(token_lifetime=token_lifetime),
            args=["--http-bind", f"127.0.0.1:{self.http_port}"],
        )

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def tokens(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.admin_port}/tokens", timeout=5).json())

    def set_tokens(self, **changes: Any) -> dict[str, Any]:
        resp = httpx.post(f"http://127.0.0.1:{self.admin_port}/tokens", json=changes, timeout=5)
        resp.raise_for_status()
        return dict(resp.json())

    def acquirer_keys(self, method: str = "client_secret_basic", **overrides: Any) -> dict[str, dict[str, Any]]:
        """`extra` for txn_harness.Host: [acquirer] kind = http and the [acquirer.http] keys."""
        f = self.files
        http: dict[str, Any] = {
            "base_url": self.base_url,
            "token_url": self.base_url + "/oauth/token",
            "client_id": "cloudlayer",
            "auth_method": method,
            "tls_ca": str(f.ca),
            "token_retry_min": 0.1,
            "token_retry_max": 0.5,
        }
        if method == "private_key_jwt":
            http["private_key_file"] = str(f.private_key)
        else:
            http["client_secret_file"] = str(f.secret)
        if f.mutual_tls:
            http |= {"client_cert_file": str(f.client_cert), "client_key_file": str(f.client_key)}
        http |= overrides
        return {"acquirer": {"kind": "http"}, "acquirer.http": http}
