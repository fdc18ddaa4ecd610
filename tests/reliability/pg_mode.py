"""The chaos run's PostgreSQL mode (ChaosPlan.pg_hosts = N): N hosts on one database, PostgreSQL itself stopped
and started again (`db_outage`), and the store read back from the shared table for the invariant checker."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import trio

from cloudlayer.store.integrity import IntegrityReport
from cloudlayer.store.pg.integrity import scan_database
from cloudlayer.store.pg.rows import select
from cloudlayer.store.types import TransactionRecord

from .hosts import AttackedHost

if TYPE_CHECKING:
    from .chaos import Chaos

# Short database waits, so that an outage shows within a second (503, /readyz) instead of after 5 s per call.
STORE_KEYS = {"postgres_connect_timeout": 1.0, "postgres_pool_timeout": 1.0, "postgres_statement_timeout": 3.0}


async def start_hosts(chaos: Chaos, extra: dict[str, dict[str, Any]]) -> list[AttackedHost]:
    from pg_hosts_harness import pg_hosts  # tests/ is importable once .hosts has run

    plan = chaos.plan
    assert chaos.simulator is not None
    extra.setdefault("store", {}).update(STORE_KEYS)

    def start() -> list[AttackedHost]:
        hosts: list[AttackedHost] = list(
            pg_hosts(
                chaos.workdir,
                chaos.simulator,  # type: ignore[arg-type]
                chaos.pg,
                plan.pg_hosts,
                extra=extra,
                # A lease outlasting an outage (and the pools' reconnect after it) by far: a host that lived
                # through it renews and keeps its claims (docs/postgres.md, "Leases and fencing").
                lease_ttl=4 * plan.db_outage,
                workers=plan.workers,
                acquirer_timeout=plan.acquirer_timeout,
            )
        )
        for host in hosts[1:]:
            host.start()
        return hosts

    return await trio.to_thread.run_sync(start)


async def db_outage(chaos: Chaos) -> None:
    """PostgreSQL dies (immediate shutdown, crash recovery at the next start) for plan.db_outage seconds while
    the load goes on; meanwhile every host's /readyz must say not ready because of the store."""
    cluster = chaos.pg.cluster
    await trio.to_thread.run_sync(cluster.crash)
    chaos.figures.db_outages += 1
    back_at = trio.current_time() + chaos.plan.db_outage
    seen: set[int] = set()
    async with httpx.AsyncClient(timeout=5) as client:
        while trio.current_time() < back_at:
            for i, host in enumerate(chaos.hosts):
                if i in seen or not host.running():
                    continue
                try:
                    r = await client.get(host.url + "/readyz")
                except httpx.TransportError:
                    continue
                if r.status_code == 503 and r.json().get("checks", {}).get("store") == "not_writable":
                    seen.add(i)
            await trio.sleep(0.1)
    chaos.figures.readyz_store_down += len(seen)
    await trio.to_thread.run_sync(cluster.restart)
    # Work resumes by itself: every host ready again (its pool reconnected) within a bound.
    async with httpx.AsyncClient(timeout=5) as client:
        for host in chaos.hosts:
            with trio.move_on_after(30) as waited:
                while host.running():
                    if await _ready(client, host):
                        break
                    await trio.sleep(0.1)
            if waited.cancelled_caught:
                chaos.figures.violations.append(f"{host.url}: not ready 30 s after PostgreSQL came back")


async def _ready(client: httpx.AsyncClient, host: AttackedHost) -> bool:
    try:
        return (await client.get(host.url + "/readyz")).status_code == 200
    except httpx.TransportError:
        return False


def stored(pg: Any, client_id: str) -> tuple[list[TransactionRecord], IntegrityReport]:
    """The client's records and the integrity scan (no PENDING tolerated), from the shared database."""
    with pg.connect() as conn:
        records = [r for r in select(conn, "created_since", (0.0,), 1_000_000) if r.client_id == client_id]
        report = scan_database(conn, describe=pg.name, pending_max_age=0.0, now=time.time())
    return records, report
