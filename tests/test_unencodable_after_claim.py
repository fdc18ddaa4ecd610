"""The defence behind the contract's dialect checks: if a request the connector cannot encode ever got past
decoding (a check missing: here we take one out), the transaction is completed as a 422 naming the field,
with no 'sent' event, nothing on the wire, no reversal and no made-up 91; its resubmission replays that answer.

Real parts: the flow, the LMDB store, the connector over TCP to the simulator, the SAF queue."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import trio

from cloudlayer.acquirer.connector import Iso8583Connector
from cloudlayer.cardkey import CardKeys
from cloudlayer.config import load_config
from cloudlayer.samples import SAMPLE_EMV_HEX, sample_purchase
from cloudlayer.sealing import Sealer
from cloudlayer.store.lmdb_store import LmdbStore
from cloudlayer.store.types import State
from cloudlayer.transactions import decoding
from cloudlayer.transactions.flow import TransactionFlow
from test_acquirer_support import running_simulator


async def test_a_request_that_cannot_be_encoded_after_the_claim_is_refused_not_declined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decoding, "_check_card", lambda card: None)  # the bug this defends against
    body = sample_purchase("not-encodable", amount=1000)
    body["emvData"] = SAMPLE_EMV_HEX.replace("5A084761739001010119", "5A0A47617390010101190000")  # 20 digits
    raw = json.dumps(body).encode()
    async with running_simulator() as sim:
        cfg_path = tmp_path / "host.toml"
        cfg_path.write_text(f'[server]\nvar_dir = "{tmp_path}/var"\n[acquirer]\nmode = "tcp"\nport = {sim.port}\n')
        cfg = load_config(cfg_path, environ={})
        sealer = Sealer.from_config(cfg)
        store = LmdbStore.from_config(cfg)
        connector = Iso8583Connector(cfg.acquirer, cfg.var_path("saf"), sealer)
        flow = TransactionFlow(store, connector, sealer, card_keys=CardKeys.from_config(cfg), acquirer_timeout=2.0)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                await nursery.start(connector.run)
                with trio.fail_after(5):
                    await connector.wait_ready()
                await flow.attach(nursery)
                on_the_wire = sim.ledger.messages  # the sign-on
                first = await flow.process("mypinpad", raw)
                again = await flow.process("mypinpad", raw)
                record = await store.get("mypinpad", "not-encodable")
                saf_depth = connector.saf_depth
                await connector.aclose()
                nursery.cancel_scope.cancel()
        finally:
            store.close()
        assert sim.ledger.messages == on_the_wire  # nothing was sent
    assert first.status == 422, first.body
    problem = msgspec.json.decode(first.body)
    assert problem["field"] == "emvData" and problem["type"] == "/problems/invalid-field"
    assert "4761739001010119" not in first.body.decode()
    assert again.replayed and again.body == first.body and again.status == 422
    assert record is not None and record.state is State.COMPLETED
    assert record.outcome == "refused-not-encodable" and record.response_code == "" and not record.approved
    assert [e.what for e in record.events] == ["received", "claimed", "not-sent", "completed"]
    assert saf_depth == 0  # no reversal of something never sent
