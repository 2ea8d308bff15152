"""The order workflow and go-live (issue 14), through HTTP: decision memory across order-select and
order-sign (and across two replicas sharing PostgreSQL), shadow mode, the per-card switch, the report
with override reason displays for code-only feedback, one log line per event, WWW-Authenticate."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from cds_service.authoring.report import report_rows
from cds_service.cli import main
from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.engine.services import default_services
from cds_service.engine.store import IssuedCard, Store, card_decisions_table, feedback_table
from cds_service.settings import SettingsError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = "pl7-ro52-rpild"
OVERRIDDEN = "ivig-not-first-line"
AUDIT_KEY = "workflow-test-key"
SELECT, SIGN = "/cds-services/ivig-order-select", "/cds-services/ivig-order-sign"


def _request(hook: str, fixture: dict[str, Any] | None = None) -> dict[str, Any]:
    service = default_services()[f"ivig-{hook}"]
    return build_request(fixture or load_fixture(FIXTURE), hook, templates=service.prefetch)


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [c["source"]["topic"]["code"] for c in response.get_json()["cards"]]


def _override_code_only(client: FlaskClient, path: str, card: dict[str, Any]) -> dict[str, Any]:
    """Override as the CDS Hooks sandbox does: reason code and system, no display, no comment."""
    reason = card["overrideReasons"][0]
    response = client.post(f"{path}/feedback", json={"feedback": [{
        "card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z",
        "overrideReason": {"reason": {"system": reason["system"], "code": reason["code"]}}}]})
    assert response.status_code == 200
    return dict(reason)


def _card(response: Any, card_id: str) -> dict[str, Any]:
    card: dict[str, Any] = next(c for c in response.get_json()["cards"] if c["source"]["topic"]["code"] == card_id)
    return card


def _with_new_pl7_result(fixture: dict[str, Any]) -> dict[str, Any]:
    """The fixture with a newer PL-7 antibody result (another resource, another date)."""
    changed = copy.deepcopy(fixture)
    entries = changed["record"]["entry"]
    old = next(e["resource"] for e in entries if e["resource"]["id"].endswith("-ab-pl7-3"))
    new = copy.deepcopy(old)
    new["id"] = old["id"] + "-repeat"
    new["effectiveDateTime"] = "2026-11-20T08:30:00-05:00"
    entries.append({"resource": new})
    return changed


@pytest.fixture
def workflow_app(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    def make(**config: Any) -> Flask:
        return make_app(CONTENT_POLICY="all", AUDIT_KEY=AUDIT_KEY, **config)
    return make


# -- decision memory ----------------------------------------------------------------------------------

def test_an_overridden_card_is_not_repeated_at_order_sign_for_the_same_draft_order(
        workflow_app: Callable[..., Flask]) -> None:
    app = workflow_app()
    client = app.test_client()
    selected = client.post(SELECT, json=_request("order-select"))
    first = _ids(selected)
    assert OVERRIDDEN in first and len(first) > 1
    _override_code_only(client, SELECT, _card(selected, OVERRIDDEN))

    signed = _ids(client.post(SIGN, json=_request("order-sign")))
    assert OVERRIDDEN not in signed
    assert set(signed) == set(first) - {OVERRIDDEN}  # the others are still shown
    # ... and again on the next order-select the EHR fires while the order is edited.
    assert OVERRIDDEN not in _ids(client.post(SELECT, json=_request("order-select")))

    store = app.extensions["cds_runtime"].store
    assert store.flush(10)
    last = store.audit_rows()[-1]
    withheld = json.loads(last["withheld"])
    assert [(w["cardId"], w["reason"]) for w in withheld] == [(OVERRIDDEN, "decision-memory")]
    assert FIXTURE not in json.dumps(withheld)  # no PHI


def test_an_accepted_card_is_remembered_too(workflow_app: Callable[..., Flask]) -> None:
    client = workflow_app().test_client()
    card = _card(client.post(SELECT, json=_request("order-select")), OVERRIDDEN)
    assert client.post(f"{SELECT}/feedback", json={"feedback": [{
        "card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-22T10:00:00Z",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}]}).status_code == 200
    assert OVERRIDDEN not in _ids(client.post(SIGN, json=_request("order-sign")))


def test_a_new_lab_result_that_changes_the_facts_brings_the_card_back(workflow_app: Callable[..., Flask]) -> None:
    client = workflow_app().test_client()
    _override_code_only(client, SELECT, _card(client.post(SELECT, json=_request("order-select")), OVERRIDDEN))
    assert OVERRIDDEN not in _ids(client.post(SIGN, json=_request("order-sign")))
    changed = _with_new_pl7_result(load_fixture(FIXTURE))
    assert OVERRIDDEN in _ids(client.post(SIGN, json=_request("order-sign", changed)))


def test_a_different_draft_order_shows_the_card(workflow_app: Callable[..., Flask]) -> None:
    client = workflow_app().test_client()
    _override_code_only(client, SELECT, _card(client.post(SELECT, json=_request("order-select")), OVERRIDDEN))
    other = copy.deepcopy(load_fixture(FIXTURE))
    other["draftOrders"]["entry"][0]["resource"]["id"] = "another-ivig-order"
    other["selections"] = ["MedicationRequest/another-ivig-order"]
    assert OVERRIDDEN in _ids(client.post(SELECT, json=_request("order-select", other)))
    assert OVERRIDDEN in _ids(client.post(SIGN, json=_request("order-sign", other)))


def test_the_memory_ends_after_decision_memory_hours(workflow_app: Callable[..., Flask]) -> None:
    app = workflow_app(DECISION_MEMORY_HOURS=24)
    client = app.test_client()
    _override_code_only(client, SELECT, _card(client.post(SELECT, json=_request("order-select")), OVERRIDDEN))
    assert OVERRIDDEN not in _ids(client.post(SIGN, json=_request("order-sign")))
    store = app.extensions["cds_runtime"].store
    with store.engine.begin() as conn:
        conn.execute(update(feedback_table).values(received_at=datetime.now(UTC) - timedelta(hours=25)))
        conn.execute(update(card_decisions_table).values(decided_at=datetime.now(UTC) - timedelta(hours=25)))
    assert OVERRIDDEN in _ids(client.post(SIGN, json=_request("order-sign")))


def test_another_client_does_not_share_the_memory(workflow_app: Callable[..., Flask]) -> None:
    """Feedback counts for the client the card was issued to: the store keys memory by iss."""
    app = workflow_app()
    client = app.test_client()
    card = _card(client.post(SELECT, json=_request("order-select")), OVERRIDDEN)
    store = app.extensions["cds_runtime"].store
    store.add_feedback("ivig-order-select", [{"card": card["uuid"], "outcome": "overridden",
                                              "outcomeTimestamp": "2026-11-22T10:00:00Z"}],
                       "https://other-client.example.org")
    assert OVERRIDDEN in _ids(client.post(SIGN, json=_request("order-sign")))


def test_issued_cards_are_recorded_before_the_response_leaves(workflow_app: Callable[..., Flask]) -> None:
    app = workflow_app()
    started = datetime.now(UTC)
    cards = app.test_client().post(SELECT, json=_request("order-select")).get_json()["cards"]
    store = app.extensions["cds_runtime"].store
    for card in cards:  # no flush: the audit queue is not what records them
        issued = store.issued_card(card["uuid"])
        assert issued is not None
        assert (issued.client_iss, issued.card_id) == ("", card["source"]["topic"]["code"])
        assert issued.content_hash == card["extension"]["org.example.ivig-cds"]["contentHash"]
        assert issued.issued_at >= started - timedelta(seconds=1)
        assert FIXTURE not in json.dumps([issued.patient_hmac, issued.order_hmac])
    assert store.issued_card("not-a-card-we-issued") is None


def test_two_replicas_sharing_postgresql_agree(make_app: Callable[..., Flask], pg_url: str) -> None:
    """The feedback arrives at replica B; the next calls, at either replica, remember it."""
    config = {"CONTENT_POLICY": "all", "AUDIT_KEY": AUDIT_KEY, "DATABASE_URL": pg_url}
    replica_a, replica_b = make_app(**config).test_client(), make_app(**config).test_client()
    selected = replica_a.post(SELECT, json=_request("order-select"))
    _override_code_only(replica_b, SELECT, _card(selected, OVERRIDDEN))
    for replica in (replica_a, replica_b):
        signed = _ids(replica.post(SIGN, json=_request("order-sign")))
        assert OVERRIDDEN not in signed and signed
    changed = _with_new_pl7_result(load_fixture(FIXTURE))
    assert OVERRIDDEN in _ids(replica_b.post(SIGN, json=_request("order-sign", changed)))


# -- shadow mode, the switch, the report --------------------------------------------------------------

def test_shadow_mode_answers_no_cards_never_412_and_the_report_counts_them(
        workflow_app: Callable[..., Flask], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = workflow_app(MODE="shadow")
    client = app.test_client()
    response = client.post(SELECT, json=_request("order-select"))
    assert response.status_code == 200 and response.get_json() == {"cards": []}
    # No prefetch and no FHIR server: live would answer 412; shadow answers as if nothing was found.
    no_prefetch = build_request(load_fixture(FIXTURE), "order-select", prefetch=False,
                                templates=default_services()["ivig-order-select"].prefetch)
    response = client.post(SELECT, json=no_prefetch)
    assert response.status_code == 200 and response.get_json() == {"cards": []}

    runtime = app.extensions["cds_runtime"]
    assert runtime.store.flush(10)
    rows = runtime.store.audit_rows()
    assert [(r["outcome"], r["status_code"]) for r in rows] == [("shadow-cards", 200), ("shadow-412", 200)]
    assert json.loads(rows[1]["prefetch"])["missing"]
    would = {w["cardId"] for w in json.loads(rows[0]["withheld"]) if w["reason"] == "shadow-mode"}
    assert would == set(load_fixture(FIXTURE)["expected"]["order-select"])

    since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    assert main(["report", "--since", since, "--database-url", runtime.settings.DATABASE_URL,
                 "--format", "json"]) == 0
    report = {r["cardId"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(report) == would
    assert all((r["shadow"], r["shown"], r["overrideRate"]) == (1, 0, None) for r in report.values())


def test_a_disabled_card_never_appears(workflow_app: Callable[..., Flask]) -> None:
    app = workflow_app(DISABLED_CARDS=f"{OVERRIDDEN}, ild-monitoring")
    client = app.test_client()
    for path, hook in ((SELECT, "order-select"), (SIGN, "order-sign")):
        shown = _ids(client.post(path, json=_request(hook)))
        assert shown and not {OVERRIDDEN, "ild-monitoring"} & set(shown)
    store = app.extensions["cds_runtime"].store
    assert store.flush(10)
    withheld = json.loads(store.audit_rows()[-1]["withheld"])
    assert {(w["cardId"], w["reason"]) for w in withheld} == {(OVERRIDDEN, "disabled"), ("ild-monitoring", "disabled")}
    report = {(r["cardId"]): r for r in store.report(datetime.now(UTC) - timedelta(days=1))}
    assert (report[OVERRIDDEN]["withheld"], report[OVERRIDDEN]["shown"]) == (2, 0)


def test_a_disabled_card_is_off_in_shadow_mode_too(workflow_app: Callable[..., Flask]) -> None:
    app = workflow_app(MODE="shadow", DISABLED_CARDS=OVERRIDDEN)
    app.test_client().post(SELECT, json=_request("order-select"))
    store = app.extensions["cds_runtime"].store
    assert store.flush(10)
    reasons = {w["cardId"]: w["reason"] for w in json.loads(store.audit_rows()[-1]["withheld"])}
    assert reasons[OVERRIDDEN] == "disabled" and "shadow-mode" in reasons.values()


@pytest.mark.parametrize(("config", "message"), [
    ({"DISABLED_CARDS": "ivig-not-first-line,no-such-card"}, "no-such-card"),
    ({"MODE": "silent"}, "MODE"),
    ({"DECISION_MEMORY_HOURS": "-1"}, "DECISION_MEMORY_HOURS"),
])
def test_workflow_settings_are_checked_at_start_up(make_app: Callable[..., Flask], config: dict[str, str],
                                                   message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        make_app(**config)


def test_the_report_names_code_only_override_reasons_from_the_card(workflow_app: Callable[..., Flask]) -> None:
    app = workflow_app()
    client = app.test_client()
    reason = _override_code_only(client, SELECT, _card(client.post(SELECT, json=_request("order-select")),
                                                       OVERRIDDEN))
    client.post(SIGN, json=_request("order-sign"))  # suppressed by the memory
    runtime = app.extensions["cds_runtime"]
    assert runtime.store.flush(10)
    assert runtime.store.feedback_rows()[0]["override_display"] is None  # the client sent no display
    rows = report_rows(runtime.settings.DATABASE_URL, (datetime.now(UTC) - timedelta(days=1)).date(),
                       runtime.settings.CARDS_DIR)
    row = next(r for r in rows if r["cardId"] == OVERRIDDEN)
    assert (row["shown"], row["suppressed"], row["overridden"], row["overrideRate"]) == (1, 1, 1, 1.0)
    assert row["overrideReasons"] == [{"code": reason["code"], "display": reason["display"], "count": 1}]
    assert reason["display"]


def test_the_review_page_shows_the_report_figures(workflow_app: Callable[..., Flask]) -> None:
    app = workflow_app()
    client = app.test_client()
    reason = _override_code_only(client, SELECT, _card(client.post(SELECT, json=_request("order-select")),
                                                       OVERRIDDEN))
    assert app.extensions["cds_runtime"].store.flush(10)
    page = client.get(f"/review/{OVERRIDDEN}").get_data(as_text=True)
    assert "In use since" in page
    assert f"{reason['display']} <code>{reason['code']}</code>: 1" in page


# -- fixes from the real client -----------------------------------------------------------------------

def test_a_401_says_bearer(make_app: Callable[..., Flask]) -> None:
    app = make_app(AUTH="jwt", TRUSTED_ISSUERS=json.dumps(
        {"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks"}}))
    response = app.test_client().post(SELECT, json=_request("order-select"))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.get_json()["error"] == "unauthorized"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_each_log_line_is_printed_once(tmp_path: Path) -> None:
    """``cds-service serve --dev`` as an operator runs it: the hook call's log line appears once."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env["CDS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'log.sqlite3'}"
    process = subprocess.Popen([sys.executable, "-c", "import sys; from cds_service.cli import main; "
                                "sys.exit(main(sys.argv[1:]))", "serve", "--dev", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1).close()  # noqa: S310 - loopback
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the service did not start"
                time.sleep(0.1)
        call = urllib.request.Request(f"{base}{SELECT}", data=json.dumps(_request("order-select")).encode(),
                                      headers={"Content-Type": "application/json"})
        urllib.request.urlopen(call, timeout=10).close()  # noqa: S310 - loopback
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    lines = [line for line in stderr.splitlines() if "hook call service=ivig-order-select" in line]
    assert len(lines) == 1, stderr


def _issued_card(uuid: str, client: str = "", card_id: str = "ivig-not-first-line") -> IssuedCard:
    return IssuedCard(card_uuid=uuid, issued_at=datetime.now(UTC), service_id="ivig-order-sign", client_iss=client,
                      patient_hmac="p" * 64, order_hmac="o" * 64, card_id=card_id, version="1",
                      content_hash="h" * 64, facts_fingerprint="f" * 64)


def test_decisions_made_before_the_decision_table_existed_are_kept(tmp_path: Path) -> None:
    """An upgraded store: feedback and issued cards written by a version without ``card_decision``
    are read into it when it is created, so no decision is forgotten."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    old = Store(url)
    old.create_schema()
    old.record_issued([_issued_card("card-1"), _issued_card("card-2", client="https://other.example.org")])
    old.add_feedback("ivig-order-sign", [{"card": "card-1", "outcome": "overridden",
                                          "outcomeTimestamp": "2026-11-22T10:00:00Z"},
                                         {"card": "card-2", "outcome": "accepted",
                                          "outcomeTimestamp": "2026-11-22T10:00:00Z"}], None)
    with old.engine.begin() as conn:
        card_decisions_table.drop(conn)
    old.close()
    upgraded = Store(url)
    upgraded.create_schema()
    since = datetime.now(UTC) - timedelta(hours=1)
    assert upgraded.decided_cards("", "p" * 64, "o" * 64, since) == {("ivig-not-first-line", "h" * 64, "f" * 64)}
    # card-2's feedback came from another client than the one it was issued to: not a decision
    assert upgraded.decided_cards("https://other.example.org", "p" * 64, "o" * 64, since) == set()
    upgraded.close()


def test_remember_withholds_decided_cards_and_records_the_rest(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'memory.sqlite3'}")
    store.create_schema()
    store.record_issued([_issued_card("first")])
    store.add_feedback("ivig-order-sign", [{"card": "first", "outcome": "accepted",
                                            "outcomeTimestamp": "2026-11-22T10:00:00Z"}], None)
    since = datetime.now(UTC) - timedelta(hours=1)
    again, other = _issued_card("again"), _issued_card("other", card_id="ild-monitoring")
    withheld = store.remember("", "p" * 64, "o" * 64, since, [again, other])
    assert [c.card_uuid for c in withheld] == ["again"]
    assert store.issued_card("other") is not None and store.issued_card("again") is None
    # many issued cards for the same patient do not change the answer
    store.record_issued([_issued_card(f"n{i}") for i in range(500)])
    assert [c.card_uuid for c in store.remember("", "p" * 64, "o" * 64, since, [_issued_card("x")])] == ["x"]
    store.close()
