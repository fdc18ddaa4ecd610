"""TLS on the acquirer link: the host's client side (acquirer.tls*) and the simulator's server side.

The standard library's defaults do the checking (certificate chain, hostname, TLS 1.2 minimum); we only add
the files: a CA bundle for the acquirer's certificate (else the system's), a client certificate for mutual
TLS, and on the simulator a client CA that makes a client certificate mandatory.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ..config import AcquirerConfig, Config


def client_context(acquirer: AcquirerConfig, resolve: Callable[[str], Path] = Path) -> ssl.SSLContext | None:
    """The context the host connects with, or None without acquirer.tls. Raises OSError / ssl.SSLError when
    a file is missing or unusable (the start turns that into one config line)."""
    if not acquirer.tls:
        return None
    context = ssl.create_default_context(cafile=str(resolve(acquirer.tls_ca)) if acquirer.tls_ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if acquirer.tls_certfile:  # mutual TLS: our certificate for the acquirer to check
        context.load_cert_chain(str(resolve(acquirer.tls_certfile)), str(resolve(acquirer.tls_keyfile)))
    return context


def check_client_files(cfg: Config) -> None:
    """At start, once: unusable acquirer TLS files stop it with one line naming the key, not a traceback per
    worker."""
    from ..config import ConfigError

    try:
        client_context(cfg.acquirer, cfg.var_path)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"invalid config: TLS material unusable (acquirer.tls_ca/tls_certfile/tls_keyfile): {e.strerror or e}"
        ) from None


def server_context(certfile: str, keyfile: str, client_ca: str = "") -> ssl.SSLContext:
    """The simulator's listening context; with `client_ca`, clients without a certificate from it are refused."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def connect_failure(e: BaseException) -> tuple[str, str | None]:
    """(error, reason) to log for a failed connection: trio wraps a refused TLS handshake in
    BrokenResourceError, and an operator needs its cause (a wrong CA, a wrong name, no client certificate)."""
    cause = e.__cause__ if isinstance(e.__cause__, ssl.SSLError) else e if isinstance(e, ssl.SSLError) else None
    if cause is None:
        return type(e).__name__, None
    return type(cause).__name__, getattr(cause, "verify_message", None) or getattr(cause, "reason", None)


async def open_stream(host: str, port: int, tls: ssl.SSLContext | None, connect_timeout: float) -> trio.abc.Stream:
    """One connection to the acquirer, TLS handshake included, within connect_timeout."""
    with trio.fail_after(connect_timeout):
        tcp = await trio.open_tcp_stream(host, port)
        if tls is None:
            return tcp
        stream = trio.SSLStream(tcp, tls, server_hostname=host)  # checks the name, not only the CA
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)  # a refused handshake must not leak the socket, once per retry
            raise
        return stream
