"""HTTP/2 DATA frames for a stream we already answered (413 before its body) are acknowledged and the stream
reset; before the fix Hypercorn raised KeyError on them and the worker died. Real host, TLS (trustme), h2 frames
written by the h2 library and by hand (the library would refuse to send DATA on a stream it saw end)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import ServerProcess, TLSFiles, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def h2_host(tmp_path: Path, tls_files: TLSFiles) -> Iterator[ServerProcess]:
    config = write_config(
        tmp_path / "cloudlayer.toml",
        {
            "server": {"certfile": str(tls_files.server_cert), "keyfile": str(tls_files.server_key)},
            "metrics": {"enabled": False},
        },
    )
    server = ServerProcess.cloudlayer_serve(config)
    try:
        server.wait_until_serving(ssl.create_default_context(cafile=str(tls_files.ca_pem)))
        yield server
    finally:
        server.stop()


def receive_until(sock: ssl.SSLSocket, conn: h2.connection.H2Connection, done: set[int], count: int) -> list[object]:
    events: list[object] = []
    deadline = time.monotonic() + 15
    while len(done) < count:
        assert time.monotonic() < deadline, events
        data = sock.recv(65536)
        assert data, f"connection closed: {events}"
        for event in conn.receive_data(data):
            events.append(event)
            if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                done.add(event.stream_id)
        sock.sendall(conn.data_to_send())
    return events


def test_data_after_an_early_answer_keeps_the_worker_and_the_connection(
    h2_host: ServerProcess, tls_files: TLSFiles
) -> None:
    parts = urlsplit(h2_host.url)
    assert parts.hostname and parts.port
    context = ssl.create_default_context(cafile=str(tls_files.ca_pem))
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(
        socket.create_connection((parts.hostname, parts.port), timeout=10), server_hostname="127.0.0.1"
    ) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for stream_id in (1, 3, 5):
            conn.send_headers(
                stream_id,
                [
                    (":method", "POST"),
                    (":path", "/oauth/token"),
                    (":scheme", "https"),
                    (":authority", "127.0.0.1"),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("content-length", "1000000000000"),
                ],
            )
        sock.sendall(conn.data_to_send())
        done: set[int] = set()
        events = receive_until(sock, conn, done, 3)
        statuses = [dict(e.headers)[b":status"] for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert statuses == [b"413"] * 3
        for stream_id in (1, 3, 5):  # the body the client was still sending: raw DATA frames
            payload = b"a" * 100
            sock.sendall(struct.pack(">I", len(payload))[1:] + b"\x00\x00" + struct.pack(">I", stream_id) + payload)
        # The same connection still serves a new stream.
        conn.send_headers(
            7,
            [(":method", "GET"), (":path", "/healthz"), (":scheme", "https"), (":authority", "127.0.0.1")],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        events = receive_until(sock, conn, done, 4)
        assert any(
            isinstance(e, h2.events.ResponseReceived) and e.stream_id == 7 and dict(e.headers)[b":status"] == b"200"
            for e in events
        ), events
    time.sleep(0.5)
    log = h2_host.stdout + h2_host.stderr
    assert "worker_exited" not in log and "KeyError" not in log and "Traceback" not in log
