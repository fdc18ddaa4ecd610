"""Raw-socket and raw-frame attackers for the hostile-HTTP tests: nothing here trusts an HTTP library to send
only well-formed traffic. Every wait is bounded."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

import h2.config
import h2.connection

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True)
class RawResult:
    status: int | None  # the first status line's code, None if no HTTP/1.1 answer came
    closed: bool  # the server closed (or reset) the connection
    head: bytes  # the first bytes received


def raw_exchange(port: int, data: bytes, *, wait: float = 5.0) -> RawResult:
    """Send `data`, then read until the server closes, `wait` passes, or a full header block arrives."""
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return RawResult(None, True, b"")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if b"\r\n\r\n" in received and len(received) > 200:
                break
    status = None
    if received.startswith(b"HTTP/1."):
        try:
            status = int(received.split(b" ", 2)[1])
        except (IndexError, ValueError):
            status = None
    return RawResult(status, closed, received[:400])


def wait_closed(sock: socket.socket, within: float) -> bool:
    """True once the server closes `sock` (EOF or reset) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame, hand-built (RFC 9113 §4.1) so we can send what a polite library never would."""
    return struct.pack(">I", len(payload))[1:] + bytes([frame_type, flags]) + struct.pack(">I", stream_id) + payload


def h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    return conn


def h2_drain(sock: socket.socket, conn: h2.connection.H2Connection, within: float) -> tuple[list[object], bool]:
    """Read frames for `within` seconds (or until close): (events, closed). Protocol errors count as closed."""
    events: list[object] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return events, False
        except (ConnectionResetError, BrokenPipeError):
            return events, True
        if not data:
            return events, True
        try:
            events.extend(conn.receive_data(data))
        except h2.exceptions.ProtocolError:
            return events, True
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except (ConnectionResetError, BrokenPipeError):
                return events, True
    return events, False


def h2_request_headers(port: int, path: str, method: str = "GET") -> list[tuple[str, str]]:
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", f"127.0.0.1:{port}")]
