"""The load generator: one process, an epoll loop over keep-alive HTTP/1.1 connections, HDR histograms.

Run by bench/run.py as a separate process (never on the host's event loop). Why hand-rolled and not an
HTTP client library: on a 2-core machine the generator gets one core while the host takes the other, so
every microsecond per request counts. Requests are pre-built bytes; a response is framed by
Content-Length only (what Hypercorn sends for fixed bodies), status read from the status line, reason
phrase not required (Hypercorn sends none, which is what trips wrk's counting). Chunked or unframed
responses are counted as errors, never guessed at.

Two modes:
- closed loop (`--rate 0`): every connection sends its next request as soon as its answer arrives;
  the measured figure is throughput at that concurrency.
- open loop (`--rate R`): request i is due at start + i/R whatever happened before; when no connection
  is free it waits in a backlog, and its latency is measured from its INTENDED send time, so a stalled
  server shows up in the percentiles instead of silently slowing the generator (no coordinated omission).

Output: one JSON object (to --out, or stdout) with per-label HDR histograms (base64, mergeable), status
counts, errors, reconnects, the measured window, the generator's own CPU and, if --cpu-pid is given,
the CPU seconds the server processes (children included) spent in that window.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import socket
import ssl
import sys
import time
from collections import deque
from typing import Any

import psutil

from loadgen_stats import HDR_DIGITS, HDR_HIGH, HDR_LOW, Stats, new_histogram
from loadgen_workload import RequestFactory, Workload

__all__ = ["HDR_DIGITS", "HDR_HIGH", "HDR_LOW", "LoadGenerator", "new_histogram"]

RECV_SIZE = 65536
# The loop wakes at least this often to check deadlines even when nothing arrives.
TICK = 0.05


def tree_cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of the given processes and all their live descendants."""
    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


class Conn:
    __slots__ = ("buf", "idx", "intended", "label", "measured", "outbuf", "sock", "token", "want_write")

    def __init__(self, idx: int, sock: socket.socket) -> None:
        self.idx = idx
        self.sock = sock
        self.buf = bytearray()
        self.outbuf = b""
        self.want_write = False
        self.label: str | None = None  # None: idle
        self.intended = 0.0
        self.measured = False
        self.token: Any = None


class ConnectionLost(Exception):
    pass


class LoadGenerator:
    def __init__(
        self,
        workload: Workload,
        connections: int,
        rate: float,
        warmup: float,
        duration: float,
        timeout: float,
        id_prefix: str,
        cpu_pids: list[int],
        seed: int | None = None,
    ) -> None:
        self.workload = workload
        self.n_conns = connections
        self.rate = rate
        self.warmup = warmup
        self.duration = duration
        self.timeout = timeout
        self.cpu_pids = cpu_pids
        self.factory = RequestFactory(workload, id_prefix, seed)
        self.stats = Stats()
        self.sel = selectors.DefaultSelector()
        self.ssl_ctx: ssl.SSLContext | None = None
        if workload.tls:
            self.ssl_ctx = ssl.create_default_context(cafile=workload.ca_file)
            if not workload.ca_file:
                # Loopback bench against a self-signed host certificate nobody gave us the CA of.
                self.ssl_ctx.check_hostname = False
                self.ssl_ctx.verify_mode = ssl.CERT_NONE
            self.ssl_ctx.set_alpn_protocols(["http/1.1"])
        self.conns: list[Conn | None] = [None] * connections
        self.idle: deque[Conn] = deque()
        self.measure_start = 0.0
        self.measure_end = 0.0
        self.window_start_unix = 0.0

    # -- connections ---------------------------------------------------------------------------------

    def _connect(self, idx: int) -> Conn:
        # Blocking connect and TLS handshake (bounded by the timeout), then non-blocking for the loop.
        raw = socket.create_connection((self.workload.host, self.workload.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        if self.ssl_ctx is not None:
            sock = self.ssl_ctx.wrap_socket(raw, server_hostname=self.workload.host)
        sock.setblocking(False)
        conn = Conn(idx, sock)
        self.conns[idx] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)
        return conn

    def _drop(self, conn: Conn, reason: str | None) -> None:
        if conn.label is not None and reason is not None:
            self.stats.error(reason)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        self.conns[conn.idx] = None
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def _reconnect(self, conn: Conn, reason: str | None) -> Conn | None:
        self._drop(conn, reason)
        self.stats.reconnects += 1
        try:
            return self._connect(conn.idx)
        except OSError:
            self.stats.error("connect")
            return None

    # -- sending and receiving -------------------------------------------------------------------------

    def _send(self, conn: Conn, intended: float, now: float) -> None:
        label, data, token = self.factory.next_request()
        conn.label, conn.intended, conn.token = label, intended, token
        conn.measured = self.measure_start <= intended < self.measure_end
        conn.buf.clear()
        self.stats.sent += 1
        self._write(conn, data)

    def _write(self, conn: Conn, data: bytes) -> None:
        try:
            n = conn.sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            n = 0
        except OSError:
            new = self._reconnect(conn, "send")
            if new is not None:
                self.idle.append(new)
            return
        if n < len(data):
            conn.outbuf = data[n:]
            if not conn.want_write:
                conn.want_write = True
                self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        elif conn.want_write:
            conn.outbuf = b""
            conn.want_write = False
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _on_readable(self, conn: Conn) -> None:
        closed = False
        while True:
            try:
                chunk = conn.sock.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            conn.buf += chunk
            if self.ssl_ctx is None:
                break  # plain sockets: one recv per readiness event is enough (level-triggered)
        self._parse(conn, closed)

    def _parse(self, conn: Conn, closed: bool) -> None:
        buf = conn.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if closed:
                new = self._reconnect(conn, "closed_mid_response" if conn.label else None)
                if new is not None:
                    self.idle.append(new)
            return
        head = bytes(buf[:end]).lower()
        # "http/1.1 200" or "http/1.1 200 ok": the reason phrase is optional (RFC 9112 section 4).
        try:
            status = int(head[9:12])
        except ValueError:
            self._protocol_error(conn, "bad_status_line")
            return
        cl = head.find(b"\r\ncontent-length:")
        if cl < 0:
            self._protocol_error(conn, "no_content_length")
            return
        line_end = head.find(b"\r\n", cl + 2)
        try:
            length = int(head[cl + 17 : line_end if line_end >= 0 else len(head)])
        except ValueError:
            self._protocol_error(conn, "bad_content_length")
            return
        total = end + 4 + length
        if len(buf) < total:
            if closed:
                new = self._reconnect(conn, "closed_mid_response")
                if new is not None:
                    self.idle.append(new)
            return
        now = time.perf_counter()
        if conn.measured:
            self.stats.record_server_timing(head)
        self._complete(conn, status, now)
        del buf[:total]
        if closed or b"\r\nconnection: close" in head:
            # The server ends the keep-alive connection (e.g. Hypercorn's keep_alive_max_requests).
            new = self._reconnect(conn, None)
            if new is not None:
                self.idle.append(new)
        else:
            self.idle.append(conn)

    def _protocol_error(self, conn: Conn, reason: str) -> None:
        new = self._reconnect(conn, reason)
        if new is not None:
            self.idle.append(new)

    def _complete(self, conn: Conn, status: int, now: float) -> None:
        label = conn.label
        if label is None:
            self.stats.error("unsolicited_response")
            return
        if conn.measured:
            self.stats.record(label, status, int((now - conn.intended) * 1_000_000))
            if not 200 <= status < 300:
                self.stats.error(f"http_{status}")
        if self.measure_start <= now < self.measure_end:
            self.stats.completed_in_window += 1
        if conn.token is not None and 200 <= status < 300:
            self.factory.succeeded(conn.token)
        conn.label = None
        conn.token = None

    def _expire(self, now: float) -> None:
        for conn in list(self.conns):
            if conn is not None and conn.label is not None and now - conn.intended > self.timeout:
                new = self._reconnect(conn, "timeout" if conn.measured else None)
                if new is not None:
                    self.idle.append(new)

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        for i in range(self.n_conns):
            self.idle.append(self._connect(i))
        start = time.perf_counter()
        self.window_start_unix = time.time() + self.warmup  # wall clock, to line the window up with other events
        self.measure_start = start + self.warmup
        self.measure_end = self.measure_start + self.duration
        drain_deadline = self.measure_end + self.timeout
        open_loop = self.rate > 0
        interval = 1.0 / self.rate if open_loop else 0.0
        backlog: deque[float] = deque()
        next_due = start
        cpu_server_start = cpu_lg_start = 0.0
        in_window = False
        last_expire = start
        select = self.sel.select
        while True:
            now = time.perf_counter()
            if not in_window and now >= self.measure_start:
                in_window = True
                cpu_server_start = tree_cpu_seconds(self.cpu_pids)
                cpu_lg_start = time.process_time()
            sending = now < self.measure_end
            if open_loop:
                while sending and next_due <= now:
                    backlog.append(next_due)
                    next_due += interval
                # A request that could not even be sent within the timeout is an error, not a dropped sample.
                while backlog and now - backlog[0] > self.timeout:
                    intended = backlog.popleft()
                    if self.measure_start <= intended < self.measure_end:
                        self.stats.error("not_sent_in_time")
                if len(backlog) > self.stats.max_backlog:
                    self.stats.max_backlog = len(backlog)
                while backlog and self.idle:
                    self._send(self.idle.popleft(), backlog.popleft(), now)
            elif sending:
                while self.idle:
                    self._send(self.idle.popleft(), now, now)
            busy = any(c is not None and c.label is not None for c in self.conns) if not sending else True
            if not sending and not backlog and not busy:
                break
            if now > drain_deadline:
                break
            if open_loop and sending and not backlog:
                wait = min(max(next_due - now, 0.0), TICK)
            else:
                wait = TICK
            for key, mask in select(wait):
                conn = key.data
                if mask & selectors.EVENT_WRITE and conn.outbuf:
                    self._write(conn, conn.outbuf)
                if mask & selectors.EVENT_READ:
                    self._on_readable(conn)
            if now - last_expire > TICK:
                last_expire = now
                self._expire(now)
        end = time.perf_counter()
        cpu_server = tree_cpu_seconds(self.cpu_pids) - cpu_server_start if self.cpu_pids else None
        cpu_lg = time.process_time() - cpu_lg_start
        # Requests still in flight at the drain deadline were measured and never answered.
        for conn in self.conns:
            if conn is not None and conn.label is not None and conn.measured:
                self.stats.error("timeout")
        for intended in backlog:
            if self.measure_start <= intended < self.measure_end:
                self.stats.error("not_sent_in_time")
        for conn in self.conns:
            if conn is not None:
                conn.sock.close()
        return self._result(end, cpu_server, cpu_lg)

    def _result(self, end: float, cpu_server: float | None, cpu_lg: float) -> dict[str, Any]:
        s = self.stats
        window = self.duration
        return {
            "mode": "open" if self.rate > 0 else "closed",
            "connections": self.n_conns,
            "rate_target": self.rate,
            "window_start_unix": self.window_start_unix,
            "warmup_s": self.warmup,
            "window_s": window,
            "drain_s": max(0.0, end - self.measure_end),
            "sent": s.sent,
            "completed_in_window": s.completed_in_window,
            "throughput": s.completed_in_window / window,
            "measured": {label: h.get_total_count() for label, h in s.histograms.items()},
            "histograms": {label: h.encode().decode() for label, h in s.histograms.items()},
            "server_timing": {name: h.encode().decode() for name, h in s.server_timing.items()},
            "status": s.status,
            "errors": s.errors,
            "reconnects": s.reconnects,
            "max_backlog": s.max_backlog,
            "loadgen_cpu_s": cpu_lg,
            "server_cpu_s": cpu_server,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", required=True, help="workload JSON written by bench/run.py")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", type=float, default=0.0, help="open-loop arrival rate in req/s; 0 = closed loop")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds sent but not measured")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, seconds")
    p.add_argument("--id-prefix", default="", help="prefix of generated identifiers (unique per process)")
    p.add_argument("--cpu-pid", type=int, action="append", default=[], help="server PID to meter (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", help="write the JSON result here (default: stdout)")
    args = p.parse_args(argv)
    if args.connections < 1 or args.duration <= 0 or args.warmup < 0 or args.rate < 0 or args.timeout <= 0:
        p.error("connections >= 1, duration > 0, warmup >= 0, rate >= 0, timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prefix = args.id_prefix or f"lg{os.getpid():x}{int(time.time()):x}-"
    gen = LoadGenerator(
        Workload.load(args.workload),
        connections=args.connections,
        rate=args.rate,
        warmup=args.warmup,
        duration=args.duration,
        timeout=args.timeout,
        id_prefix=prefix,
        cpu_pids=args.cpu_pid,
        seed=args.seed,
    )
    try:
        result = gen.run()
    except OSError as e:
        if e.errno == errno.ECONNREFUSED:
            print(f"loadgen: connection refused by {gen.workload.host}:{gen.workload.port}", file=sys.stderr)
            return 2
        raise
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
