"""End to end: the hook endpoints with full, no and half prefetch against a loopback FHIR server.

Skipped until ``cds_service.http.app.create_app`` exists (the owner wires ``gather`` into the endpoint).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir_server import FhirTestServer

from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture, record_resources, shift_fixture
from cds_service.engine.services import REQUIRED_KEYS, default_services

app_module = pytest.importorskip("cds_service.http.app")
if not hasattr(app_module, "create_app"):
    pytest.skip("cds_service.http.app.create_app is not there yet", allow_module_level=True)
create_app = app_module.create_app

TOKEN = "fhir-access-token-7c2d51"  # noqa: S105 - a test value that must never leak
HOOKS = ("order-select", "order-sign")


def _service_id(hook: str) -> str:
    return next(s.id for s in default_services().values() if s.hook == hook)


def _templates(hook: str) -> dict[str, str]:
    return dict(default_services()[_service_id(hook)].prefetch)


def _ivig_fixtures() -> list[Any]:
    """(fixture, hook) pairs whose fixture expects cards for that hook: the IVIG paths."""
    pairs = []
    for name in list_fixtures():
        expected = load_fixture(name).get("expected") or {}
        for hook in HOOKS:
            if expected.get(hook):
                pairs.append(pytest.param(name, hook, id=f"{name}-{hook}"))
    return pairs or [pytest.param(None, None, marks=pytest.mark.skip(reason="no IVIG fixtures yet"))]


IVIG_FIXTURES = _ivig_fixtures()


def _strip_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_strip_uuids(v) for v in value]
    return value


@pytest.fixture
def make_app(tmp_path: Path) -> Any:
    def factory(**config: Any) -> Any:
        settings = {"AUTH": "off", "PROFILE": "development", "CONTENT_POLICY": "all",
                    "DATABASE_URL": f"sqlite:///{tmp_path / 'audit.sqlite3'}", **config}
        app = create_app(settings)
        app.testing = True
        return app

    return factory


@pytest.fixture
def served() -> Iterator[FhirTestServer]:
    with FhirTestServer() as server:
        yield server


def _serve_fixture(server: FhirTestServer, name: str) -> dict[str, Any]:
    fixture = load_fixture(name)
    server.resources = record_resources(shift_fixture(fixture))
    return fixture


def _call(app: Any, hook: str, body: dict[str, Any]) -> Any:
    return app.test_client().post(f"/cds-services/{_service_id(hook)}", json=body)


def _with_token(body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "ivig-cds"}
    return body


@pytest.mark.parametrize(("name", "hook"), IVIG_FIXTURES)
def test_same_cards_with_full_no_and_half_prefetch(served: FhirTestServer, make_app: Any, name: str,
                                                   hook: str) -> None:
    fixture = _serve_fixture(served, name)
    app = make_app(FHIR_SERVERS=served.base_url)
    keys = list(_templates(hook))

    full = _call(app, hook, build_request(fixture, hook, prefetch=True, fhir_server=served.base_url))
    assert full.status_code == 200, full.get_json()
    assert served.requests == []  # everything came with the request

    none = _call(app, hook, _with_token(build_request(fixture, hook, prefetch=False,
                                                      fhir_server=served.base_url)))
    assert none.status_code == 200, none.get_json()
    assert sorted({r.path.split("/")[0] for r in served.requests}) == sorted(
        {t.split("?")[0].split("/")[0] for t in _templates(hook).values()})
    assert {r.authorization for r in served.requests} == {f"Bearer {TOKEN}"}

    served.requests.clear()
    half = _call(app, hook, _with_token(build_request(fixture, hook, keys=keys[::2],
                                                      fhir_server=served.base_url)))
    assert half.status_code == 200, half.get_json()
    assert len(served.requests) == len(keys[1::2])

    cards = _strip_uuids(full.get_json()["cards"])
    assert cards, "an IVIG fixture with expected cards gave none"
    assert _strip_uuids(none.get_json()["cards"]) == cards
    assert _strip_uuids(half.get_json()["cards"]) == cards


@pytest.mark.parametrize(("name", "hook"), IVIG_FIXTURES[:1])
def test_no_fhir_server_and_no_prefetch_is_412(make_app: Any, name: str, hook: str) -> None:
    fixture = load_fixture(name)
    response = _call(make_app(FHIR_SERVERS="*"), hook, build_request(fixture, hook, prefetch=False))
    assert response.status_code == 412
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    named = {e for issue in body["issue"] for e in issue.get("expression", [])}
    assert named == {f"prefetch.{k}" for k in REQUIRED_KEYS}


@pytest.mark.parametrize(("name", "hook"), IVIG_FIXTURES[:1])
def test_disallowed_fhir_server_is_never_contacted(served: FhirTestServer, make_app: Any, name: str,
                                                   hook: str) -> None:
    fixture = _serve_fixture(served, name)
    app = make_app(FHIR_SERVERS="https://fhir.example.org")
    response = _call(app, hook, _with_token(build_request(fixture, hook, prefetch=False,
                                                          fhir_server=served.base_url)))
    assert response.status_code == 412
    assert served.requests == []


@pytest.mark.parametrize(("name", "hook"), IVIG_FIXTURES[:1])
def test_token_is_sent_and_never_logged(served: FhirTestServer, make_app: Any, name: str, hook: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fixture = _serve_fixture(served, name)
    app = make_app(FHIR_SERVERS=served.base_url)
    served.page_size = 1  # paging too: every page with the token
    response = _call(app, hook, _with_token(build_request(fixture, hook, prefetch=False,
                                                          fhir_server=served.base_url)))
    assert response.status_code == 200
    assert served.requests and {r.authorization for r in served.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in caplog.text
    assert all(TOKEN not in repr(r.args) for r in caplog.records)
    assert TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize(("name", "hook"), IVIG_FIXTURES[:1])
def test_slow_server_answers_within_the_deadline(served: FhirTestServer, make_app: Any, name: str,
                                                 hook: str) -> None:
    fixture = _serve_fixture(served, name)
    app = make_app(FHIR_SERVERS=served.base_url, FHIR_DEADLINE_S=1)
    warm = _call(app, hook, build_request(fixture, hook, fhir_server=served.base_url))  # load content once
    assert warm.status_code == 200
    served.delay = 10
    body = build_request(fixture, hook, keys=sorted(REQUIRED_KEYS), fhir_server=served.base_url)
    started = time.monotonic()
    response = _call(app, hook, body)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 1.5
    assert isinstance(response.get_json()["cards"], list)  # decided with what came, the rest noted


@pytest.mark.parametrize(("name", "hook"), IVIG_FIXTURES[:1])
def test_non_ivig_order_queries_nothing(served: FhirTestServer, make_app: Any, name: str, hook: str) -> None:
    fixture = _serve_fixture(served, name)
    app = make_app(FHIR_SERVERS=served.base_url)
    body = build_request(fixture, hook, prefetch=False, fhir_server=served.base_url)
    order = {"resourceType": "MedicationRequest", "id": "not-ivig-1", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{fixture['patientId']}"},
             "medicationCodeableConcept": {"text": "acetaminophen 500 mg tablet"}}
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": order}]}
    if hook == "order-select":
        body["context"]["selections"] = ["MedicationRequest/not-ivig-1"]
    response = _call(app, hook, body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}
    assert served.requests == []
