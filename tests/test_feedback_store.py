"""Feedback (issue 2 item 5): validated, answered 200 {}, stored once, read back — on SQLite, and on
PostgreSQL when ``CDS_TEST_DATABASE_URL`` is set (``.ci/run`` sets it when a local server answers)."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from issued import issue_cards

from cds_service.engine.store import Store

EXAMPLES = Path(__file__).parent / "spec_examples"
FEEDBACK = "/cds-services/ivig-order-select/feedback"
def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return document


def accepted(card: str | None = None, suggestion: str | None = None) -> dict[str, Any]:
    return {"card": str(uuid.uuid4()) if card is None else card, "outcome": "accepted",
            "acceptedSuggestions": [{"id": suggestion or str(uuid.uuid4())}],
            "outcomeTimestamp": "2026-11-22T10:05:31Z"}


def overridden(card: str | None = None, **reason: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card or str(uuid.uuid4()), "outcome": "overridden",
                            "outcomeTimestamp": "2026-11-22T10:06:00Z"}
    if reason:
        item["overrideReason"] = reason
    return item


def runtime_store(client: FlaskClient) -> Store:
    store: Store = client.application.extensions["cds_runtime"].store
    return store


def issued(client: FlaskClient, body: dict[str, Any], path: str = FEEDBACK) -> dict[str, Any]:
    """``body`` after recording its (well-formed) card uuids as issued by the service of ``path``."""
    service_id = path.split("/")[2]
    cards = {i["card"] for i in body.get("feedback", []) if isinstance(i, dict) and isinstance(i.get("card"), str)
             and 0 < len(i["card"]) <= 100}
    fresh = [c for c in cards if runtime_store(client).issued_card(c) is None]
    if fresh and service_id in client.application.extensions["cds_runtime"].services:
        issue_cards(client.application, service_id, *fresh)
    return body


def post(client: FlaskClient, *items: dict[str, Any], path: str = FEEDBACK) -> Any:
    return client.post(path, json=issued(client, {"feedback": list(items)}, path))


def assert_ok(response: Any) -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {}


def assert_400(response: Any, *fragments: str) -> None:
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "detail"}
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_client(request: pytest.FixtureRequest, make_app: Callable[..., Flask]) -> FlaskClient:
    """A test client whose store is SQLite (tmp_path) or PostgreSQL (a fresh schema, see conftest)."""
    if request.param == "sqlite":
        return make_app().test_client()
    url = request.getfixturevalue("pg_url")
    return make_app(DATABASE_URL=url).test_client()


# --- validation (the store does not matter) --------------------------------------------------------


@pytest.mark.parametrize("name", ["feedback-accepted.json", "feedback-overridden.json",
                                  "feedback-overridden-with-reason.json"])
def test_spec_feedback_examples_are_accepted(client: FlaskClient, name: str) -> None:
    assert_ok(client.post(FEEDBACK, json=issued(client, example(name))))


def test_override_reason_with_only_code_and_system_is_accepted(client: FlaskClient) -> None:
    item = overridden(reason={"code": "inadequate-response",
                              "system": "https://ivig-cds.example.org/override-reason"})
    assert_ok(post(client, item))
    rows = runtime_store(client).feedback_rows(item["card"])
    assert len(rows) == 1
    assert rows[0]["override_code"] == "inadequate-response"
    assert rows[0]["override_display"] is None and rows[0]["user_comment"] is None


def test_missing_card_uuid_is_400(client: FlaskClient) -> None:
    item = accepted()
    del item["card"]
    assert_400(post(client, item), "$.feedback[0]", "card")


def test_empty_card_uuid_is_400(client: FlaskClient) -> None:
    assert_400(post(client, accepted(card="")), "$.feedback[0].card")


@pytest.mark.parametrize("outcome", ["dismissed", "", None, 1])
def test_bad_outcome_is_400(client: FlaskClient, outcome: Any) -> None:
    item = overridden()
    item["outcome"] = outcome
    assert_400(post(client, item), "$.feedback[0].outcome")


def test_missing_outcome_is_400(client: FlaskClient) -> None:
    item = overridden()
    del item["outcome"]
    assert_400(post(client, item), "outcome")


def test_accepted_without_accepted_suggestions_is_400(client: FlaskClient) -> None:
    item = accepted()
    del item["acceptedSuggestions"]
    assert_400(post(client, item), "$.feedback[0]", "acceptedSuggestions")


def test_accepted_with_empty_accepted_suggestions_is_400(client: FlaskClient) -> None:
    item = accepted()
    item["acceptedSuggestions"] = []
    assert_400(post(client, item), "acceptedSuggestions")


def test_override_reason_coding_without_code_is_400(client: FlaskClient) -> None:
    assert_400(post(client, overridden(reason={"system": "https://ivig-cds.example.org/override-reason"})),
               "overrideReason")


def test_bad_outcome_timestamp_is_400(client: FlaskClient) -> None:
    item = overridden()
    item["outcomeTimestamp"] = "yesterday"
    assert_400(post(client, item), "outcomeTimestamp")


@pytest.mark.parametrize("body", [{}, {"feedback": []}, {"feedback": {}}, [], "feedback"])
def test_feedback_envelope_shape_is_checked(client: FlaskClient, body: Any) -> None:
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 400
    assert set(response.get_json()) == {"error", "detail"}


def test_feedback_non_json_is_415(client: FlaskClient) -> None:
    response = client.post(FEEDBACK, data=json.dumps({"feedback": [overridden()]}), content_type="text/plain")
    assert response.status_code == 415


def test_feedback_invalid_json_is_400(client: FlaskClient) -> None:
    response = client.post(FEEDBACK, data=b'{"feedback": [', content_type="application/json")
    assert_400(response)


def test_feedback_for_unknown_service_is_404(client: FlaskClient) -> None:
    response = post(client, overridden(), path="/cds-services/no-such-service/feedback")
    assert response.status_code == 404
    assert set(response.get_json()) == {"error", "detail"}
    assert runtime_store(client).feedback_rows() == []


def test_invalid_feedback_stores_nothing(client: FlaskClient) -> None:
    bad = accepted()
    del bad["acceptedSuggestions"]
    assert post(client, overridden(), bad).status_code == 400
    assert runtime_store(client).feedback_rows() == []


def test_unknown_fields_and_extensions_are_accepted(client: FlaskClient) -> None:
    item = overridden(reason={"code": "x", "system": "https://ivig-cds.example.org/override-reason",
                              "display": "X", "extension": {"a": 1}})
    item["extension"] = {"com.example": {"b": 2}}
    item["somethingNew"] = "ok"
    assert_ok(client.post(FEEDBACK, json=issued(client, {"feedback": [item], "extension": {"c": 3}})))


# --- storage, on each backend ----------------------------------------------------------------------


def test_feedback_is_stored_and_read_back(store_client: FlaskClient) -> None:
    card = str(uuid.uuid4())
    suggestion = str(uuid.uuid4())
    assert_ok(post(store_client, accepted(card, suggestion)))
    item = overridden(card, reason={"code": "inadequate-response",
                                    "system": "https://ivig-cds.example.org/override-reason",
                                    "display": "Inadequate response to first-line therapy"},
                      userComment="free text")
    assert_ok(post(store_client, item))
    rows = runtime_store(store_client).feedback_rows(card)
    assert [r["outcome"] for r in rows] == ["accepted", "overridden"]
    first, second = rows
    assert first["card_uuid"] == card and first["service_id"] == "ivig-order-select"
    assert json.loads(first["accepted_suggestions"]) == [suggestion]
    assert first["outcome_timestamp"] == "2026-11-22T10:05:31Z"
    assert first["received_at"] is not None
    assert second["override_system"] == "https://ivig-cds.example.org/override-reason"
    assert second["override_code"] == "inadequate-response"
    assert second["override_display"] == "Inadequate response to first-line therapy"
    assert second["user_comment"] == "free text"
    assert second["accepted_suggestions"] is None


def test_same_feedback_posted_twice_is_stored_once(store_client: FlaskClient) -> None:
    item = accepted()
    assert_ok(post(store_client, item))
    assert_ok(post(store_client, copy.deepcopy(item)))
    assert len(runtime_store(store_client).feedback_rows(item["card"])) == 1


def test_key_order_does_not_defeat_idempotency(store_client: FlaskClient) -> None:
    item = accepted()
    reordered = dict(reversed(list(copy.deepcopy(item).items())))
    assert_ok(post(store_client, item))
    assert_ok(post(store_client, reordered))
    assert len(runtime_store(store_client).feedback_rows(item["card"])) == 1


def test_two_identical_items_in_one_post_are_stored_once(store_client: FlaskClient) -> None:
    item = overridden()
    assert_ok(post(store_client, item, copy.deepcopy(item)))
    assert len(runtime_store(store_client).feedback_rows(item["card"])) == 1


def test_different_outcomes_for_one_card_are_both_stored(store_client: FlaskClient) -> None:
    card = str(uuid.uuid4())
    assert_ok(post(store_client, overridden(card), accepted(card)))
    assert len(runtime_store(store_client).feedback_rows(card)) == 2


def test_a_card_of_one_service_gets_no_feedback_on_another(store_client: FlaskClient) -> None:
    item = overridden()
    assert_ok(post(store_client, item))
    response = post(store_client, item, path="/cds-services/ivig-order-sign/feedback")
    assert response.status_code == 404, response.get_data(as_text=True)
    assert set(response.get_json()) == {"error", "detail"}
    rows = runtime_store(store_client).feedback_rows(item["card"])
    assert [r["service_id"] for r in rows] == ["ivig-order-select"]


def test_feedback_rows_lists_everything_in_order(store_client: FlaskClient) -> None:
    items = [overridden() for _ in range(3)]
    assert_ok(post(store_client, *items))
    rows = runtime_store(store_client).feedback_rows()
    assert [r["card_uuid"] for r in rows] == [i["card"] for i in items]


def test_feedback_survives_a_new_app_on_the_same_store(store_client: FlaskClient,
                                                       make_app: Callable[..., Flask]) -> None:
    item = overridden()
    assert_ok(post(store_client, item))
    url = runtime_store(store_client).url
    again = make_app(DATABASE_URL=url).test_client()
    assert_ok(post(again, item))  # still idempotent across processes
    assert len(runtime_store(again).feedback_rows(item["card"])) == 1


def test_concurrent_duplicates_are_stored_once(store_client: FlaskClient) -> None:
    app = store_client.application
    item = accepted()
    issued(store_client, {"feedback": [item]})
    barrier = threading.Barrier(8)

    def send() -> int:
        client = app.test_client()
        barrier.wait(timeout=10)
        status: int = post(client, item).status_code
        return status

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: send(), range(8)))
    assert statuses == [200] * 8
    assert len(runtime_store(store_client).feedback_rows(item["card"])) == 1
