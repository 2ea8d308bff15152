"""Audit trail: one row per hook call, no PHI, written off the response path, never failing a call."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.engine.services import default_services

AUDIT_KEY = "test-audit-key"


def _request(name: str, hook: str = "order-select", **kwargs: Any) -> dict[str, Any]:
    service = default_services()[f"ivig-{hook}"]
    return build_request(load_fixture(name), hook, templates=service.prefetch, **kwargs)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(params=["sqlite", "postgresql"])
def audited_app(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> Flask:
    config: dict[str, Any] = {"CONTENT_POLICY": "all", "AUDIT_KEY": AUDIT_KEY}
    if request.param == "postgresql":
        config["DATABASE_URL"] = request.getfixturevalue("pg_url")
    return make_app(**config)


def _rows(app: Flask) -> list[dict[str, Any]]:
    store = app.extensions["cds_runtime"].store
    assert store.flush(10)
    rows: list[dict[str, Any]] = store.audit_rows()
    return rows


def test_a_hook_call_is_audited_without_phi(audited_app: Flask) -> None:
    body = _request("pl7-ro52-rpild")
    response = audited_app.test_client().post("/cds-services/ivig-order-select", json=body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    rows = _rows(audited_app)
    assert len(rows) == 1
    row = rows[0]
    patient_id = body["context"]["patientId"]
    expected_hmac = hmac.new(AUDIT_KEY.encode(), patient_id.encode(), hashlib.sha256).hexdigest()
    assert row["patient_hmac"] == expected_hmac
    assert patient_id not in json.dumps({k: str(v) for k, v in row.items()})
    assert row["service_id"] == "ivig-order-select" and row["hook"] == "order-select"
    assert row["hook_instance"] == body["hookInstance"]
    assert row["outcome"] == "cards" and row["status_code"] == 200
    audited = json.loads(row["cards"])
    assert [c["uuid"] for c in audited] == [c["uuid"] for c in cards]
    for entry, card in zip(audited, cards, strict=True):
        ext = card["extension"]["org.example.ivig-cds"]
        assert entry == {"uuid": card["uuid"], "cardId": ext["cardId"], "version": ext["version"],
                         "contentHash": ext["contentHash"]}
    prefetch = json.loads(row["prefetch"])
    assert set(prefetch) == set(default_services()["ivig-order-select"].prefetch)
    assert {p["status"] for p in prefetch.values()} <= {"prefetch", "null"}
    assert row["latency_ms"] > 0


def test_silent_refused_and_412_calls_are_audited(audited_app: Flask) -> None:
    client = audited_app.test_client()
    assert client.post("/cds-services/ivig-order-select", json=_request("not-ivig-amoxicillin")).status_code == 200
    assert client.post("/cds-services/ivig-order-select", json={"hook": "order-select"}).status_code == 400
    no_prefetch = _request("pl7-ro52-rpild", prefetch=False)
    assert client.post("/cds-services/ivig-order-select", json=no_prefetch).status_code == 412
    outcomes = [(r["outcome"], r["status_code"]) for r in _rows(audited_app)]
    assert outcomes == [("no-cards", 200), ("4xx", 400), ("412", 412)]


def test_feedback_links_to_the_audited_card_in_the_report(audited_app: Flask) -> None:
    from datetime import UTC, datetime, timedelta

    client = audited_app.test_client()
    card = client.post("/cds-services/ivig-order-select", json=_request("pl7-ro52-rpild")).get_json()["cards"][0]
    reason = card["overrideReasons"][0]
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                              "overrideReason": {"reason": {"system": reason["system"], "code": reason["code"]}},
                              "outcomeTimestamp": "2026-11-22T10:00:00Z"}]}
    assert client.post("/cds-services/ivig-order-select/feedback", json=feedback).status_code == 200
    store = audited_app.extensions["cds_runtime"].store
    assert store.flush(10)
    report = store.report(datetime.now(UTC) - timedelta(days=1))
    row = next(r for r in report if r["cardId"] == card["source"]["topic"]["code"])
    assert row["shown"] == 1 and row["overridden"] == 1
    assert [(r["code"], r["count"]) for r in row["overrideReasons"]] == [(reason["code"], 1)]


def test_a_stopped_store_does_not_fail_hook_calls(make_app: Callable[..., Flask]) -> None:
    app = make_app(CONTENT_POLICY="all", DATABASE_URL=f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/x")
    client = app.test_client()
    for _ in range(3):
        response = client.post("/cds-services/ivig-order-select", json=_request("pl7-ro52-rpild"))
        assert response.status_code == 200
        assert response.get_json()["cards"]
    store = app.extensions["cds_runtime"].store
    store.flush(20)
    ready = client.get("/readyz")
    assert ready.status_code == 200  # the audit store alone does not take the replica out (issue 15)
    body = ready.get_json()
    assert body["audit"]["lost"] == 3
    assert any("store unreachable" in warning for warning in body["warnings"])


def test_audit_rows_of_a_burst_are_written_together(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows queued close together go to the database in one batch (one transaction), not one each;
    ``flush`` does not wait for the linger; close writes what is still queued."""
    import time

    from cds_service.engine import store as store_module
    from cds_service.engine.store import AuditRecord, Store

    store = Store(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    store.create_schema()
    batches: list[int] = []
    write = store._write

    def counting(records: list[AuditRecord]) -> None:
        batches.append(len(records))
        write(records)

    monkeypatch.setattr(store, "_write", counting)
    monkeypatch.setattr(store_module, "AUDIT_LINGER_S", 0.5)
    record = AuditRecord(service_id="ivig-order-select", hook="order-select", outcome="no-cards",
                         status_code=200, latency_ms=1.0)
    for _ in range(40):
        store.audit(record)
        time.sleep(0.005)
    started = time.monotonic()
    assert store.flush(10)
    assert time.monotonic() - started < 0.4, "flush wakes the writer instead of waiting for the linger"
    assert sum(batches) == 40
    assert batches == [40]
    store.audit(record)
    assert store.close(timeout=5)
    assert sum(batches) == 41
    assert len(store.audit_rows()) == 41
