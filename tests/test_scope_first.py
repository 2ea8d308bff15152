"""Scope before prefetch (issue 16): a call with no IVIG order is answered from ``context`` alone.

Its prefetch is not counted or read (the count limit applies when the prefetch is read); the body
size and depth limits still apply to the whole body, and a malformed context is still refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from cds_service.devtools.fixtures import build_request, load_fixture

SELECT = "/cds-services/ivig-order-select"
NOT_IVIG = "not-ivig-amoxicillin"
IVIG = "pl7-ro52-rpild"


def _request(fixture: str, observations: int = 0) -> dict[str, Any]:
    request = build_request(load_fixture(fixture), "order-select")
    request["prefetch"]["laboratory"] = {
        "resourceType": "Bundle", "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final"}}
                  for i in range(observations)]}
    return request


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(CONTENT_POLICY="all", MAX_PREFETCH_RESOURCES=10)


def _audit_rows(app: Flask) -> list[dict[str, Any]]:
    store = app.extensions["cds_runtime"].store
    assert store.flush(10)
    rows: list[dict[str, Any]] = store.audit_rows()
    return rows


def test_the_prefetch_count_limit_does_not_apply_to_a_call_out_of_scope(app: Flask) -> None:
    response = app.test_client().post(SELECT, json=_request(NOT_IVIG, observations=50))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_the_prefetch_count_limit_applies_when_an_ivig_order_reads_it(app: Flask) -> None:
    response = app.test_client().post(SELECT, json=_request(IVIG, observations=50))
    assert response.status_code == 400
    assert response.get_json()["error"] == "too_many_prefetch_resources"
    rows = _audit_rows(app)
    assert [(r["outcome"], r["status_code"]) for r in rows] == [("4xx", 400)]


def test_an_out_of_scope_call_does_not_read_its_prefetch(app: Flask) -> None:
    """Prefetch values the IVIG path would have to read (a Bundle whose entries are not resources)
    cannot matter to a call that is answered from its context."""
    request = _request(NOT_IVIG)
    request["prefetch"]["laboratory"] = {"resourceType": "Bundle", "entry": "not a list"}
    request["prefetch"]["conditions"] = {"resourceType": "Bundle", "entry": [1, "two", None] * 20}
    response = app.test_client().post(SELECT, json=request)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_a_prefetch_value_that_is_no_resource_is_refused_when_it_is_read(app: Flask) -> None:
    """The request schema's prefetch rule (each value a resource or null) is checked when an IVIG order
    reads the prefetch, with the same message; out of scope it is not read at all."""
    for draft, expected in ((IVIG, 400), (NOT_IVIG, 200)):
        request = _request(draft)
        request["prefetch"]["medications"] = "MedicationRequest?patient=1"
        response = app.test_client().post(SELECT, json=request)
        assert response.status_code == expected, draft
    assert response.get_json() == {"cards": []}
    request = _request(IVIG)
    request["prefetch"]["medications"] = ["not", "a", "resource"]
    body = app.test_client().post(SELECT, json=request).get_json()
    assert body["detail"] == "$.prefetch.medications: expected object or null, got array"
    request["prefetch"] = ["not", "an", "object"]
    for draft in (IVIG, NOT_IVIG):  # the prefetch itself must be an object, in scope or not
        request = _request(draft)
        request["prefetch"] = ["not", "an", "object"]
        assert app.test_client().post(SELECT, json=request).status_code == 400


def test_depth_still_applies_to_the_whole_body_out_of_scope(app: Flask) -> None:
    request = _request(NOT_IVIG)
    text = json.dumps(request)
    deep = '{"a":' * 80 + "1" + "}" * 80
    text = text.replace('"prefetch": {', '"prefetch": {"deep": ' + deep + ", ", 1)
    response = app.test_client().post(SELECT, data=text.encode(), content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"] == "too_deep"


def test_a_malformed_context_is_still_refused_out_of_scope(app: Flask) -> None:
    request = _request(NOT_IVIG)
    del request["context"]["patientId"]
    response = app.test_client().post(SELECT, json=request)
    assert response.status_code == 400
