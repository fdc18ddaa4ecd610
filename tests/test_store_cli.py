"""`cloudlayer txn show|list` as an operator runs them: a real subprocess on a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from cloudlayer.config import load_config
from cloudlayer.store.commands import parse_since
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import Completion, Event, TransactionRecord


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAYER_")}
    return subprocess.run(
        [sys.executable, "-m", "cloudlayer.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cloudlayer.toml"
    path.write_text(f'[server]\nvar_dir = "{tmp_path / "var"}"\n')
    trio.run(populate, LmdbStore.from_config(load_config(path, environ={})))
    return path


async def populate(store: LmdbStore) -> None:
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for tid, client in (("t-1", "alpha"), ("t-2", "alpha"), ("t-1", "beta")):
                stan, rrn = await store.next_ids()
                await store.claim(
                    TransactionRecord(
                        client_id=client,
                        transaction_id=tid,
                        fingerprint=b"\x01" * 32,
                        transaction_type="PURCHASE",
                        amount=1234,
                        currency="978",
                        terminal_id="TERM0001",
                        masked_pan="476173******0119",
                        stan=stan,
                        rrn=rrn,
                        sealed_request=b"\x99" * 40,
                        events=[Event(1.0, "received")],
                    )
                )
            await store.complete(
                "alpha",
                "t-1",
                Completion(
                    response_status=200,
                    response_body=b'{"responseCode":"00"}',
                    response_code="00",
                    approved=True,
                    authorisation_code="A1B2C3",
                    outcome="approved",
                    events=(Event(2.0, "answered", "00"),),
                ),
            )
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def test_show_by_id_client_and_rrn(config: Path) -> None:
    out = run_cli(config, "txn", "show", "t-1", "--client", "alpha", "--json")
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["state"] == "COMPLETED" and view["response_code"] == "00"
    assert view["masked_pan"] == "476173******0119"
    assert view["sealed_request"] is None  # erased on completion
    assert [e["what"] for e in view["timeline"]] == ["received", "answered"]

    both = json.loads(run_cli(config, "txn", "show", "t-1", "--json").stdout)
    assert sorted(v["client_id"] for v in both) == ["alpha", "beta"]
    pending = next(v for v in both if v["client_id"] == "beta")
    assert pending["sealed_request"] == "present (encrypted)"  # never its bytes
    assert "99999999" not in json.dumps(both)

    by_rrn = json.loads(run_cli(config, "txn", "show", "--rrn", view["rrn"], "--json").stdout)
    assert by_rrn["transaction_id"] == "t-1" and by_rrn["client_id"] == "alpha"

    text = run_cli(config, "txn", "show", "t-2")
    assert text.returncode == 0 and "PENDING" in text.stdout and "timeline:" in text.stdout


def test_show_missing_and_bad_arguments(config: Path) -> None:
    assert run_cli(config, "txn", "show", "nope").returncode == 1
    assert run_cli(config, "txn", "show").returncode == 2
    bad = run_cli(config, "txn", "list", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr


def test_list_since(config: Path) -> None:
    out = run_cli(config, "txn", "list", "--since", "1h", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 3
    assert len(json.loads(run_cli(config, "txn", "list", "--since", "1h", "--limit", "2", "--json").stdout)) == 2
    future = run_cli(config, "txn", "list", "--since", "2999-01-01T00:00:00", "--json")
    assert json.loads(future.stdout) == []
    table = run_cli(config, "txn", "list")
    assert table.returncode == 0 and table.stdout.count("\n") == 3


def test_no_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text(f'[server]\nvar_dir = "{tmp_path / "nothing"}"\n')
    out = run_cli(path, "txn", "list")
    assert out.returncode == 1 and "no transaction store" in out.stderr
    assert not (tmp_path / "nothing").exists()  # a read-only command creates nothing


def test_parse_since() -> None:
    assert parse_since("90m", now=10_000.0) == 10_000.0 - 5400
    assert parse_since("1970-01-01T01:00:00") == 3600.0
    assert parse_since("1970-01-01T01:00:00+01:00") == 0.0
    with pytest.raises(ValueError, match="since"):
        parse_since("soon")


def test_check_reports_a_sound_store_and_a_damaged_one(config: Path) -> None:
    ok = run_cli(config, "txn", "check", "--pending-max-age", "1e9")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["problems"] == [] and report["records"] >= 1
    # A record written behind the store's back, with no index entries: the scan names it and exits 1.
    import lmdb

    cfg = load_config(config, environ={})
    env = lmdb.open(str(cfg.var_path(cfg.store.path)), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"c1\x00stray", b"\xc1not msgpack", db=env.open_db(b"records", txn=txn))
    env.close()
    bad = run_cli(config, "txn", "check", "--pending-max-age", "1e9")
    assert bad.returncode == 1
    assert {p["check"] for p in json.loads(bad.stdout)["problems"]} >= {"decode"}
