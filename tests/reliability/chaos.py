"""Chaos under load: Mypinpad-like clients resubmit while workers, the host and the acquirer link fail.

`run_chaos(workdir, ChaosPlan(...))` starts the simulator and a 2-worker host, runs `clients` trio tasks
that each send fresh transactions (and resubmit a share of them on purpose), while a chaos task, every
`interval` seconds, does one of: SIGKILL a random worker, SIGKILL the whole host, cut the acquirer link
(simulator `close_next`), stall the acquirer past our timeout (`delay`), drop answers (`drop_next`).
Killed hosts are restarted on the same port and store. Mypinpad is emulated: on a 5xx, a timeout or a
connection error it resubmits the SAME body, until a 200 (bounded per transaction).

At the end: faults off, every transaction driven to a 200, the SAF queue drained, the host stopped, and
the invariants checked against the simulator's ledger and the store (see `check_invariants`).

With `pg_hosts = N` (and a `pg_cluster.PgDatabase`), N hosts share one PostgreSQL store and SAF queue
(tests/pg_hosts_harness.py: each under its own hostname, judged by the others through its lease), every
attempt goes to a host picked at random (a resubmission often lands on another host than the first attempt),
kills hit either host, and the `db_outage` action stops PostgreSQL (immediate shutdown) for a while and starts it
again (reliability/pg_mode.py). The same invariant checker reads the shared table instead of the LMDB file.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio

from cloudlayer.samples import sample_purchase
from cloudlayer.store.integrity import IntegrityReport, iter_records, scan_store
from cloudlayer.store.types import State, TransactionRecord

from .hosts import AttackedHost, SimulatorProcess

APPROVED = frozenset({"00", "08", "10", "11"})
ACTIONS = ("kill_worker", "link_cut", "kill_host", "stall", "drop")
# The payment host also fails in ways of its own: every token revoked at once, a 500 after processing.
HTTP_ACTIONS = (*ACTIONS, "revoke_tokens", "http_5xx")
# Amounts and what the simulator does with them: approve, decline 05/51, never answer (-> our timeout).
AMOUNTS = ((1000, 0.80), (1005, 0.08), (1051, 0.08), (9999, 0.04))


@dataclass
class ChaosPlan:
    duration: float = 20.0  # seconds of load with chaos
    clients: int = 6
    interval: float = 3.0  # mean seconds between chaos actions
    resubmit_share: float = 0.2  # of delivered answers, resubmitted anyway (Mypinpad retry races)
    concurrent_share: float = 0.05  # of transactions sent twice at once
    workers: int = 2
    acquirer_timeout: float = 1.0
    per_txn_deadline: float = 90.0  # Mypinpad gives up resubmitting after this (then our final pass)
    seed: int = 8
    connector_kind: str = "iso8583"  # or "http" (tests/connector_kinds.py)
    pg_hosts: int = 0  # 0: one host on LMDB; N: N hosts on one PostgreSQL database (Chaos(..., pg=...))
    actions: tuple[str, ...] = ()  # () = every action of the connector kind (plus db_outage with pg_hosts)
    db_outage: float = 3.0  # seconds PostgreSQL stays down in a db_outage action


@dataclass
class Txn:
    transaction_id: str
    body: bytes
    answers: list[bytes] = field(default_factory=list)  # every 200 body delivered for it
    failed_attempts: int = 0


@dataclass
class ChaosFigures:
    attempted: int = 0
    requests: int = 0
    delivered: int = 0
    duplicates_served: int = 0
    lost_answers: int = 0  # 5xx, timeout or connection error: resubmitted
    worker_kills: int = 0
    host_kills: int = 0
    link_cuts: int = 0
    stalls: int = 0
    drops: int = 0
    revocations: int = 0  # http: every token revoked at the payment host
    db_outages: int = 0  # PostgreSQL stopped (immediate) and started again
    store_503s: int = 0  # 503 store-unavailable answers (problem+json, Retry-After), resubmitted
    readyz_store_down: int = 0  # a host's /readyz seen 503 naming the store during an outage
    server_errors: int = 0  # http: 500 after processing
    authorizations: int = 0
    reversals: int = 0
    saf_left: int = -1
    integrity_problems: int = -1
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def table_row(self) -> dict[str, Any]:
        row = {k: v for k, v in vars(self).items() if k != "violations"}
        row["violations"] = len(self.violations)
        return row


class Mypinpad:
    """One emulated Mypinpad: a token, and resubmission of the same body until a 200, each attempt to one of the
    hosts (at random when there are several: a load balancer that does not stick)."""

    def __init__(
        self, hosts: list[AttackedHost], figures: ChaosFigures, timeout: float, rng: random.Random | None = None
    ) -> None:
        self.hosts = hosts
        self.host = hosts[0]  # the OAuth client (the hosts share the client registry)
        self.rng = rng or random.Random(0)
        self.figures = figures
        self.token = ""
        self.client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=32))

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _refresh_token(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.host.client_id,
            "client_secret": self.host.client_secret,
        }
        r = await self.client.post(self.rng.choice(self.hosts).url + "/oauth/token", data=form)
        r.raise_for_status()
        self.token = str(r.json()["access_token"])

    async def submit(self, txn: Txn, deadline: float) -> bytes | None:
        """Send until a 200 or the deadline; the delivered body, or None if Mypinpad gave up."""
        backoff = 0.05
        while trio.current_time() < deadline:
            try:
                if not self.token:
                    await self._refresh_token()
                self.figures.requests += 1
                r = await self.client.post(
                    self.rng.choice(self.hosts).url + "/transaction/process",
                    content=txn.body,
                    headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
                )
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code == 200:
                txn.answers.append(r.content)
                self.figures.delivered += 1
                if r.headers.get("Idempotent-Replayed") == "true":
                    self.figures.duplicates_served += 1
                return r.content
            if r is not None and r.status_code == 401:
                self.token = ""
            elif r is not None and r.status_code < 500:
                self.figures.violations.append(
                    f"{txn.transaction_id}: a valid resubmission got {r.status_code} {r.text[:200]}"
                )
                return None
            else:
                if r is not None:
                    self._check_5xx(txn, r)
                txn.failed_attempts += 1
                self.figures.lost_answers += 1
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        return None

    def _check_5xx(self, txn: Txn, r: httpx.Response) -> None:
        """Our host never answers a 500: a 5xx is a 503 problem+json with Retry-After (busy, in progress, store
        unavailable), always safe to resubmit."""
        problem = r.headers.get("Content-Type", "").startswith("application/problem+json")
        if r.status_code != 503 or not problem or not r.headers.get("Retry-After"):
            self.figures.violations.append(f"{txn.transaction_id}: answered {r.status_code} {r.text[:200]}")
        elif r.json().get("type", "").endswith("/problems/store-unavailable"):
            self.figures.store_503s += 1


def _amount(rng: random.Random) -> int:
    x, acc = rng.random(), 0.0
    for amount, share in AMOUNTS:
        acc += share
        if x < acc:
            return amount
    return AMOUNTS[0][0]


class Chaos:
    def __init__(self, workdir: Path, plan: ChaosPlan, pg: Any = None) -> None:
        assert bool(plan.pg_hosts) == (pg is not None), "pg_hosts needs a pg_cluster.PgDatabase, and only then"
        self.workdir = workdir
        self.plan = plan
        self.pg = pg
        self.rng = random.Random(plan.seed)
        self.figures = ChaosFigures()
        self.txns: list[Txn] = []
        self.simulator: SimulatorProcess | None = None
        self.actions = plan.actions or (HTTP_ACTIONS if plan.connector_kind == "http" else ACTIONS)
        if plan.pg_hosts and not plan.actions:
            self.actions = (*self.actions, "db_outage")
        self.host: AttackedHost | None = None  # the first host (the only one on LMDB)
        self.hosts: list[AttackedHost] = []
        self.admin = httpx.AsyncClient(timeout=10)
        self.metrics_text = b""  # /metrics after the run, for the card-data scan
        self.first_round_done = False  # every chaos action has run at least once

    # ---- load ----------------------------------------------------------------------------------------

    async def _client_loop(self, index: int, stop_at: float) -> None:
        assert self.host is not None
        rng = random.Random(self.plan.seed * 1000 + index)
        mpp = Mypinpad(self.hosts, self.figures, timeout=self.plan.acquirer_timeout * 2 + 8, rng=rng)
        try:
            n = 0
            # Load goes on until the time is up AND every chaos action has run once (a slow machine must not
            # make the run end before the host kills it promised).
            while trio.current_time() < stop_at or not self.first_round_done:
                n += 1
                tid = f"chaos-{index}-{n}"
                body = json.dumps(sample_purchase(tid, amount=_amount(rng))).encode()
                txn = Txn(tid, body)
                self.txns.append(txn)
                self.figures.attempted += 1
                deadline = trio.current_time() + self.plan.per_txn_deadline
                if rng.random() < self.plan.concurrent_share:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(mpp.submit, txn, deadline)
                        nursery.start_soon(mpp.submit, txn, deadline)
                elif await mpp.submit(txn, deadline) is not None and rng.random() < self.plan.resubmit_share:
                    await mpp.submit(txn, deadline)
        finally:
            await mpp.aclose()

    # ---- chaos ---------------------------------------------------------------------------------------

    async def _faults(self, **faults: Any) -> None:
        assert self.simulator is not None
        r = await self.admin.post(f"http://127.0.0.1:{self.simulator.admin_port}/faults", json=faults)
        r.raise_for_status()

    async def _restart(self, host: AttackedHost | None = None) -> None:
        host = host or self.host
        assert host is not None
        await trio.to_thread.run_sync(host.start)

    async def _act(self, action: str) -> None:
        assert self.host is not None
        timeout = self.plan.acquirer_timeout
        victim = self.rng.choice(self.hosts)  # either host, with several
        if action == "kill_worker":
            if await trio.to_thread.run_sync(victim.kill_random_worker, self.rng):
                self.figures.worker_kills += 1
            if not victim.running():  # the supervisor gave up (crash loop): restart it
                await self._restart(victim)
        elif action == "kill_host":
            await trio.to_thread.run_sync(victim.kill_all)
            self.figures.host_kills += 1
            await self._restart(victim)
        elif action == "db_outage":
            from .pg_mode import db_outage

            await db_outage(self)
        elif action == "link_cut":
            await self._faults(close_next=self.rng.randint(1, 3))
            self.figures.link_cuts += 1
        elif action == "stall":
            await self._faults(delay_seconds=timeout * 1.5, delay_next=self.rng.randint(2, 6))
            self.figures.stalls += 1
        elif action == "drop":
            await self._faults(drop_next=self.rng.randint(1, 4))
            self.figures.drops += 1
        elif action == "revoke_tokens":
            assert self.simulator is not None
            r = await self.admin.post(f"http://127.0.0.1:{self.simulator.admin_port}/tokens", json={"revoke_all": True})
            r.raise_for_status()
            self.figures.revocations += 1
        elif action == "http_5xx":
            await self._faults(http_error_next=self.rng.randint(1, 3))
            self.figures.server_errors += 1

    async def _chaos_loop(self, stop_at: float) -> None:
        # Every action once per round: the first round in ACTIONS order (a short run covers the crashes
        # first), later rounds shuffled.
        order = list(self.actions)
        while True:
            pause = self.rng.uniform(self.plan.interval * 0.5, self.plan.interval * 1.5)
            if self.first_round_done and trio.current_time() + pause >= stop_at:
                return
            await trio.sleep(pause)
            if not order:
                order = list(self.actions)
                self.rng.shuffle(order)
            await self._act(order.pop(0))
            if not order:
                self.first_round_done = True

    async def _faults_off(self) -> None:
        await self._faults(
            drop_answers=False,
            drop_rate=0.0,
            drop_next=0,
            delay_seconds=0.0,
            delay_next=0,
            close_next=0,
            close_rate=0.0,
            http_error_next=0,
        )

    # ---- the run -------------------------------------------------------------------------------------

    async def run(self) -> ChaosFigures:
        plan = self.plan
        started = time.monotonic()
        from connector_kinds import start_acquirer  # tests/ is importable once .hosts has run

        acquirer = start_acquirer(plan.connector_kind, self.workdir, latency_ms=5)
        self.simulator = acquirer.simulator
        try:
            if self.pg is not None:
                from .pg_mode import start_hosts

                self.hosts = await start_hosts(self, acquirer.host_extra({"metrics": {"enabled": True}}))
            else:
                self.hosts = [
                    AttackedHost(
                        self.workdir / "host",
                        self.simulator,
                        workers=plan.workers,
                        acquirer_timeout=plan.acquirer_timeout,
                        extra=acquirer.host_extra({"metrics": {"enabled": True}}),
                    )
                ]
                await self._restart(self.hosts[0])
            self.host = self.hosts[0]
            try:
                stop_at = trio.current_time() + plan.duration
                async with trio.open_nursery() as nursery:
                    for i in range(plan.clients):
                        nursery.start_soon(self._client_loop, i, stop_at)
                    nursery.start_soon(self._chaos_loop, stop_at)
                await self._faults_off()
                await self._final_pass()
                self.figures.saf_left = await self._drain_saf()
                if self.host.server is not None and self.host.server.metrics_url:
                    self.metrics_text = (await self.admin.get(self.host.server.metrics_url + "/metrics")).content
            finally:
                for host in self.hosts:
                    await trio.to_thread.run_sync(host.stop)
            ledger = await trio.to_thread.run_sync(self.simulator.ledger)
            if self.pg is not None:
                from .pg_mode import stored

                records, report = await trio.to_thread.run_sync(stored, self.pg, self.host.client_id)
            else:
                records = [r for r in iter_records(self.host.store_path) if r.client_id == self.host.client_id]
                report = scan_store(self.host.store_path, pending_max_age=0.0)
            check_invariants(self.figures, self.txns, ledger, records, report)
        finally:
            await self.admin.aclose()
            self.simulator.stop()
        self.figures.seconds = round(time.monotonic() - started, 1)
        return self.figures

    async def _final_pass(self) -> None:
        """Mypinpad gave up on some (bounded retries): the merchant retries later; every one ends in a 200."""
        assert self.host is not None
        mpp = Mypinpad(self.hosts, self.figures, timeout=self.plan.acquirer_timeout * 2 + 8, rng=self.rng)
        try:
            for txn in self.txns:
                if not txn.answers:
                    await mpp.submit(txn, trio.current_time() + 60)
        finally:
            await mpp.aclose()

    async def _drain_saf(self, within: float = 60.0) -> int:
        assert self.host is not None
        depth = -1
        with trio.move_on_after(within):
            while True:
                depth = await trio.to_thread.run_sync(self.host.saf_depth)
                if depth == 0:
                    return 0
                await trio.sleep(0.5)
        return depth


def check_invariants(
    figures: ChaosFigures,
    txns: list[Txn],
    ledger: dict[str, Any],
    stored: list[TransactionRecord],
    report: IntegrityReport,
) -> None:
    """Append every broken promise to figures.violations. `stored`: the Mypinpad client's records and `report`:
    the store's integrity scan with pending_max_age 0 (LMDB or PostgreSQL, read after the hosts stopped)."""
    v = figures.violations
    totals = ledger["totals"]
    figures.authorizations = int(totals["authorizations"])
    figures.reversals = int(totals["reversals"])
    records = {r.transaction_id: r for r in stored}
    by_stan = {(r.terminal_id.ljust(8), r.stan): r for r in records.values()}
    sent = {t.transaction_id for t in txns}
    for tid in set(records) - sent:
        v.append(f"{tid}: stored but never sent")
    for txn in txns:
        rec = records.get(txn.transaction_id)
        if not txn.answers:
            v.append(f"{txn.transaction_id}: never answered with a 200")
            continue
        if len(set(txn.answers)) != 1:
            v.append(f"{txn.transaction_id}: {len(set(txn.answers))} different answers delivered")
        if rec is None or rec.state is not State.COMPLETED:
            v.append(f"{txn.transaction_id}: answered but not COMPLETED in the store")
        elif rec.response_body != txn.answers[0]:
            v.append(f"{txn.transaction_id}: the delivered answer differs from the stored one")
    for key, entry in ledger["transactions"].items():
        terminal, _, stan = key.partition(":")
        _check_ledger_entry(key, entry, by_stan.get((terminal, stan)), v)
    if figures.saf_left != 0:
        v.append(f"SAF queue not drained: {figures.saf_left} left")
    figures.integrity_problems = len(report.problems)
    v.extend(f"integrity: {p.check} {p.key}: {p.detail}" for p in report.problems)
    if report.pending:
        v.append(f"{report.pending} transaction(s) still PENDING after every one was answered")


def _check_ledger_entry(key: str, entry: dict[str, Any], rec: TransactionRecord | None, v: list[str]) -> None:
    auths = int(entry["authorizations"])
    if auths > 1:
        v.append(f"{key}: authorized {auths} times")
    if auths == 0:
        return  # a reversal of something the issuer never saw (crash before sending): harmless
    reversed_ = bool(entry["reversed"])
    issuer_approved = entry.get("response_code") in APPROVED
    if rec is None:
        if issuer_approved and not reversed_:
            v.append(f"{key}: approved at the issuer, unknown to the store, not reversed")
        return
    if rec.state is not State.COMPLETED:
        return  # reported above
    answer = msgspec.json.decode(rec.response_body)
    if issuer_approved and not reversed_ and not answer["approved"]:
        v.append(f"{key} ({rec.transaction_id}): approved at the issuer, declined to Mypinpad, never reversed")
    if reversed_ and answer["approved"] and rec.transaction_type != "REVERSAL":
        v.append(f"{key} ({rec.transaction_id}): reversed at the issuer but answered approved")
    if issuer_approved and answer["approved"] and answer["responseCode"] != entry.get("response_code"):
        v.append(f"{key} ({rec.transaction_id}): answer code differs from the issuer's")
