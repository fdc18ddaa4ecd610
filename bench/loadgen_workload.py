"""What the load generator sends: a workload spec (JSON written by bench/run.py) turned into request bytes.

A workload is a weighted list of request kinds. A kind's body may hold the placeholder `{ID}`: each fresh
request gets a new identifier there (unique across the run and across load generator processes), and with
probability `replay_share` a request resends, byte for byte, the body of an earlier request of that kind
(what Mypinpad does after a 500: the host must replay its stored answer); `replay_share` 1.0 sends
REPLAY_SEED fresh requests, then replays only. `{TAP}` (16 hex digits: a cryptogram,
9F26) is a fresh card tap per fresh request, derived from its identifier so that a replay is byte-identical:
the host refuses the same card transaction under another transactionId (409), so one fixed field 55 would make
every request after the first a duplicate. Requests are built from
pre-split byte fragments so building one costs a few hundred nanoseconds, not a template render.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ID_PLACEHOLDER = "{ID}"
TAP_PLACEHOLDER = "{TAP}"
# How many earlier identifiers per kind a replay may pick from (a ring buffer: O(1) insert and pick).
REPLAY_POOL = 4096
# replay_share 1.0 (replays only): fresh requests until this many were answered, then nothing but replays.
REPLAY_SEED = 32


def tap_of(ident: bytes) -> str:
    """The {TAP} of a request identifier: 16 hex digits of its SHA-256 (~0.5 us), the same for its replays."""
    return hashlib.sha256(ident).hexdigest()[:16].upper()


def fill(body: str, ident: str) -> str:
    """A body template with {ID} and {TAP} filled in, as the factory does (for one-off requests: preflight)."""
    return body.replace(ID_PLACEHOLDER, ident).replace(TAP_PLACEHOLDER, tap_of(ident.encode()))


@dataclass(frozen=True)
class RequestKind:
    name: str
    weight: float
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: str
    replay_share: float = 0.0

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RequestKind:
        kind = cls(
            name=str(raw["name"]),
            weight=float(raw.get("weight", 1.0)),
            method=str(raw.get("method", "POST")).upper(),
            path=str(raw["path"]),
            headers=tuple((str(k), str(v)) for k, v in raw.get("headers", [])),
            body=str(raw.get("body", "")),
            replay_share=float(raw.get("replay_share", 0.0)),
        )
        if kind.weight <= 0:
            raise ValueError(f"kind {kind.name}: weight must be positive")
        if not 0.0 <= kind.replay_share <= 1.0:
            raise ValueError(f"kind {kind.name}: replay_share must be in [0, 1]")
        if TAP_PLACEHOLDER in kind.body and ID_PLACEHOLDER not in kind.body:
            raise ValueError(f"kind {kind.name}: {TAP_PLACEHOLDER} needs {ID_PLACEHOLDER} in the body")
        if kind.replay_share and ID_PLACEHOLDER not in kind.body:
            raise ValueError(f"kind {kind.name}: replay_share needs {ID_PLACEHOLDER} in the body")
        return kind

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weight": self.weight,
            "method": self.method,
            "path": self.path,
            "headers": [list(h) for h in self.headers],
            "body": self.body,
            "replay_share": self.replay_share,
        }


@dataclass(frozen=True)
class Workload:
    host: str
    port: int
    kinds: tuple[RequestKind, ...]
    tls: bool = False
    ca_file: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> Workload:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        kinds = tuple(RequestKind.from_json(k) for k in raw["kinds"])
        if not kinds:
            raise ValueError("a workload needs at least one request kind")
        return cls(
            host=str(raw["host"]),
            port=int(raw["port"]),
            kinds=kinds,
            tls=bool(raw.get("tls", False)),
            ca_file=raw.get("ca_file"),
        )

    def dump(self, path: str | Path) -> None:
        raw = {
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "ca_file": self.ca_file,
            "kinds": [k.to_json() for k in self.kinds],
        }
        Path(path).write_text(json.dumps(raw, indent=2), encoding="utf-8")


@dataclass
class _KindBuilder:
    kind: RequestKind
    head: bytes  # request line + fixed headers, up to (not including) content-length
    before: bytes  # body before {ID}
    after: bytes  # body after {ID} (or b"" when there is no placeholder)
    templated: bool
    tapped: bool
    label_fresh: str
    label_replay: str
    pool: list[bytes] = field(default_factory=list)
    pool_next: int = 0


class RequestFactory:
    """Builds the next request: returns (label, request bytes). Not thread-safe; one per process."""

    def __init__(self, workload: Workload, id_prefix: str, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._prefix = id_prefix
        self._counter = 0
        host_header = f"{workload.host}:{workload.port}"
        self._builders: list[_KindBuilder] = []
        for kind in workload.kinds:
            lines = [f"{kind.method} {kind.path} HTTP/1.1", f"host: {host_header}"]
            lines += [f"{k}: {v}" for k, v in kind.headers]
            head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
            before, sep, after = kind.body.partition(ID_PLACEHOLDER)
            self._builders.append(
                _KindBuilder(
                    kind=kind,
                    head=head,
                    before=before.encode(),
                    after=after.encode(),
                    templated=bool(sep),
                    tapped=TAP_PLACEHOLDER in kind.body,
                    label_fresh=kind.name,
                    label_replay=f"{kind.name}:replay",
                )
            )
        total = sum(k.weight for k in workload.kinds)
        acc = 0.0
        self._cumulative: list[float] = []
        for k in workload.kinds:
            acc += k.weight / total
            self._cumulative.append(acc)
        self._cumulative[-1] = 1.0

    def labels(self) -> list[str]:
        out: list[str] = []
        for b in self._builders:
            out.append(b.label_fresh)
            if b.kind.replay_share:
                out.append(b.label_replay)
        return out

    def _pick(self) -> _KindBuilder:
        if len(self._builders) == 1:
            return self._builders[0]
        r = self._rng.random()
        for builder, edge in zip(self._builders, self._cumulative, strict=True):
            if r < edge:
                return builder
        return self._builders[-1]

    def next_request(self) -> tuple[str, bytes, tuple[_KindBuilder, bytes] | None]:
        """(label, request bytes, token): pass the token to `succeeded` when the answer was a 2xx."""
        b = self._pick()
        label = b.label_fresh
        token: tuple[_KindBuilder, bytes] | None = None
        if b.templated:
            # Replays pick only identifiers whose first attempt was answered: Mypinpad resubmits after
            # an answer (a 500), so a replay measures the stored-answer path, not waiting on a PENDING one.
            seeded = len(b.pool) >= REPLAY_SEED if b.kind.replay_share >= 1.0 else bool(b.pool)
            if seeded and self._rng.random() < b.kind.replay_share:
                ident = b.pool[self._rng.randrange(len(b.pool))]
                label = b.label_replay
            else:
                self._counter += 1
                ident = f"{self._prefix}{self._counter:010d}".encode()
                if b.kind.replay_share:
                    token = (b, ident)
            body = b.before + ident + b.after
            if b.tapped:
                body = body.replace(TAP_PLACEHOLDER.encode(), tap_of(ident).encode())
        else:
            body = b.before
        return label, b.head + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body, token

    @staticmethod
    def succeeded(token: tuple[_KindBuilder, bytes]) -> None:
        b, ident = token
        if len(b.pool) < REPLAY_POOL:
            b.pool.append(ident)
        else:
            b.pool[b.pool_next] = ident
            b.pool_next = (b.pool_next + 1) % REPLAY_POOL
