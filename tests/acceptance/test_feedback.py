"""Feedback (issue 2 item 5; spec §Feedback).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from acceptance.patients import asys_text_only_no_antibodies
from acceptance.support import assert_error, call, card, hook_request


def _cards_for_feedback(client: FlaskClient, templates: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    record, drafts, _ = asys_text_only_no_antibodies()
    return call(client, hook_request("order-select", record, drafts, templates=templates["order-select"]))


def test_feedback_variants_are_accepted_and_stored_once(app: Flask, client: FlaskClient,
                                                        templates: dict[str, dict[str, str]]) -> None:
    cards = _cards_for_feedback(client, templates)
    monitoring = card(cards, "ild-monitoring")
    warning = card(cards, "ivig-not-first-line")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    accepted = {"card": monitoring["uuid"], "outcome": "accepted",
                "acceptedSuggestions": [{"id": monitoring["suggestions"][0]["uuid"]}], "outcomeTimestamp": now}
    overridden_sandbox = {"card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": now,
                          "overrideReason": {"reason": {"code": warning["overrideReasons"][0]["code"],
                                                        "system": warning["overrideReasons"][0]["system"]}}}
    overridden_full = {"card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": now,
                       "overrideReason": {"reason": warning["overrideReasons"][1],
                                          "userComment": "Rheumatology advised — ünïcode ✓"},
                       "extension": {"org.example.acceptance": {"x": 1}}}
    overridden_bare = {"card": warning["uuid"], "outcome": "overridden",
                       "outcomeTimestamp": "2026-01-01T10:00:00.123+00:00"}
    for items in ([accepted], [overridden_sandbox], [overridden_full, overridden_bare]):
        for _ in range(2):  # every call twice: feedback is idempotent
            response = client.post("/cds-services/ivig-order-select/feedback", json={"feedback": items})
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.get_json() == {}
    store = app.extensions["cds_runtime"].store
    assert len(store.feedback_rows(monitoring["uuid"])) == 1, "the same feedback posted twice is stored once"
    assert len(store.feedback_rows(warning["uuid"])) == 3


@pytest.mark.parametrize("item, why", [
    ({"outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}, "accepted without acceptedSuggestions"),
    ({"outcome": "dismissed", "outcomeTimestamp": "2026-01-01T00:00:00Z"}, "unknown outcome"),
    ({"outcome": "overridden"}, "no outcomeTimestamp"),
    ({"outcome": "overridden", "outcomeTimestamp": "yesterday"}, "not RFC 3339"),
    ({"outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z", "overrideReason": {"reason": "x"}},
     "reason is not a Coding"),
    ({"outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z", "acceptedSuggestions": []},
     "empty acceptedSuggestions"),
])
def test_feedback_refused_with_a_json_error(client: FlaskClient, item: dict[str, Any], why: str) -> None:
    body = {"feedback": [{"card": str(uuid.uuid4()), **item}]}
    response = client.post("/cds-services/ivig-order-sign/feedback", json=body)
    assert_error(response, 400)


def test_feedback_shape_errors(client: FlaskClient) -> None:
    path = "/cds-services/ivig-order-sign/feedback"
    assert_error(client.post(path, json={"feedback": {"card": "x"}}), 400)
    assert_error(client.post(path, json=[]), 400)
    assert_error(client.post(path, json={"feedback": []}), 400)
    assert_error(client.post(path, data="feedback", content_type="text/plain"), 415)
    assert_error(client.post("/cds-services/no-such-service/feedback", json={"feedback": []}), 404)
    assert_error(client.get(path), 405)
