"""What the alerting rules and the Grafana dashboard read is what a running host exports: a real host (two
workers, a real simulator over TCP) answers an approval, a bearer failure, a timeout (91, reversal queued and
never acknowledged) and loses a worker; then its /metrics is read and parsed."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cloudlayer.observability import metrics
from cloudlayer.samples import sample_purchase
from conftest import REPO
from txn_harness import Host, SimulatorProcess

pytestmark = pytest.mark.slow

DASHBOARD = REPO / "deploy/grafana/cloudlayer.json"
RULES = REPO / "deploy/prometheus/cloudlayer-alerts.yml"
METRIC_NAME = re.compile(r"\bcloudlayer_[a-z0-9_]+")
MB = 1024 * 1024


def scrape(url: str) -> list[Sample]:
    text = httpx.get(url, timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


def workers(host: Host) -> list[psutil.Process]:
    assert host.server is not None
    return [p for p in psutil.Process(host.server.proc.pid).children() if any("spawn_main" in a for a in p.cmdline())]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Sample]]:
    directory = tmp_path_factory.mktemp("metrics-host")
    sim = SimulatorProcess(directory / "sim")
    host = Host(directory / "host", sim, workers=2, acquirer_timeout=1.0, metrics=True)
    try:
        host.start()
        host.wait_links_up(2)  # both workers signed on before the faults (else the survivor of the kill has none)
        token = host.token()
        with httpx.Client(base_url=host.url, timeout=15) as client:

            def purchase(transaction_id: str) -> httpx.Response:
                return client.post(
                    "/transaction/process",
                    headers={"Authorization": f"Bearer {token}"},
                    json=sample_purchase(transaction_id, amount=1000),
                )

            assert purchase("metrics-approved").json()["responseCode"] == "00"
            bad = client.post("/transaction/process", headers={"Authorization": "Bearer not-a-token"}, json={})
            assert bad.status_code == 401
            sim.set_faults(drop_answers=True)  # nothing comes back: a 91, and its reversal is never acknowledged
            assert purchase("metrics-timeout").json()["responseCode"] == "91"
        victim = workers(host)[0]
        victim.send_signal(signal.SIGKILL)
        host.wait_replaced_worker()
        deadline = time.monotonic() + 30
        while True:
            samples = scrape(host.metrics_url)
            ready = [
                value(samples, "cloudlayer_worker_exits_total") == 1,
                value(samples, "cloudlayer_saf_queue_depth") >= 1,
                value(samples, "cloudlayer_saf_oldest_entry_age_seconds") >= 1,
                value(samples, "cloudlayer_workers") == 2,
            ]
            if all(ready) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        yield samples
    finally:
        host.stop()
        sim.stop()


def names(samples: list[Sample]) -> set[str]:
    return {s.name for s in samples}


def test_the_new_metrics_report_what_happened(exported: list[Sample]) -> None:
    assert value(exported, "cloudlayer_transaction_responses_total", code="00") == 1
    assert value(exported, "cloudlayer_transaction_responses_total", code="91") == 1
    assert value(exported, "cloudlayer_transaction_responses_total", code="05") == 0  # exported before any
    assert value(exported, "cloudlayer_oauth_token_failures_total", reason="invalid_token") == 1
    assert value(exported, "cloudlayer_oauth_token_failures_total", reason="locked_out") == 0
    assert value(exported, "cloudlayer_saf_queue_depth") == 1
    assert 1 <= value(exported, "cloudlayer_saf_oldest_entry_age_seconds") < 120
    used, limit = value(exported, "cloudlayer_store_map_used_bytes"), value(exported, "cloudlayer_store_map_max_bytes")
    assert 0 < used < limit and limit == 65536 * MB  # store.max_map_size_mb's default
    assert value(exported, "cloudlayer_worker_exits_total") == 1
    assert value(exported, "cloudlayer_workers") == 2


def load_dashboard() -> dict[str, object]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_exprs() -> list[str]:
    panels = load_dashboard()["panels"]
    assert isinstance(panels, list) and panels
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_the_dashboard_is_valid_grafana_json() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "cloudlayer" and dashboard["title"] == "CloudLayer"
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["targets"] and all(t["expr"].strip() and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_the_dashboard_reads_only_metrics_the_host_exports(exported: list[Sample]) -> None:
    referenced = {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    assert referenced and referenced <= names(exported), referenced - names(exported)


def test_the_dashboard_shows_every_metric_the_host_exports(exported: list[Sample]) -> None:
    text = " ".join(dashboard_exprs())
    families = {
        re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in names(exported) if n.startswith("cloudlayer_")
    }
    missing = {f for f in families if not re.search(rf"\b{f}(_bucket|_total)?\b", text)}
    assert not missing, missing


def test_the_alert_rules_read_only_metrics_the_host_exports(exported: list[Sample]) -> None:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    referenced = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert len(referenced) >= 8 and referenced <= names(exported), referenced - names(exported)


def test_the_label_values_the_rules_select_are_exported(exported: list[Sample]) -> None:
    """A selector on a label value the host never uses would keep its alert silent forever."""
    text = RULES.read_text() + DASHBOARD.read_text()
    selected = set(re.findall(r'(route|code)=\\?"([^"\\]+)\\?"', text))
    assert selected == {("route", "/transaction/process"), ("code", "91")}
    for label, wanted in selected:
        assert any(s.labels.get(label) == wanted for s in exported), (label, wanted)


@pytest.mark.parametrize(
    ("code", "label"),
    [("00", "00"), ("91", "91"), ("N7", "N7"), ("9", "other"), ("001", "other"), ("9 ", "other"), ("é1", "other")],
)
def test_a_response_code_label_is_two_letters_or_digits(code: str, label: str) -> None:
    """What an acquirer sends as a response code cannot grow the label set: garbage is 'other'."""
    assert metrics.response_code_label(code) == label
