"""Issue 12 through the HTTP endpoint: the i12-* fixture patients (written from scratch), with the
prefetch filled and with every key fetched from a real FHIR server on loopback (FHIR fallback).

The card ids come from each fixture's ``expected``; this file checks what the issue says the cards
must *do* for these patients (no removal offer in pregnancy, MDA5 warning without immunosuppression,
no dose from an old weight, no PFT order after recent PFTs, a data note for an unknown birth date,
the safety card alone for another indication or a child).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from fhir_server import FhirTestServer
from flask import Flask
from flask.testing import FlaskClient

from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture, record_resources, shift_fixture
from cds_service.engine.services import default_services

NAMES = [n for n in list_fixtures() if n.startswith("i12-")]
HOOKS = ("order-select", "order-sign")
PATHS = {"order-select": "/cds-services/ivig-order-select", "order-sign": "/cds-services/ivig-order-sign"}


def _app(tmp_path_factory: pytest.TempPathFactory, **config: Any) -> Flask:
    from cds_service import create_app

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CDS_") and k != "CDS_TEST_DATABASE_URL"}
    try:
        database = tmp_path_factory.mktemp("i12") / "ivig-cds.sqlite3"
        app = create_app({"AUTH": "off", "PROFILE": "development", "CONTENT_POLICY": "all",
                          "DATABASE_URL": f"sqlite:///{database}", **config})
    finally:
        os.environ.update(saved)
    app.testing = True
    return app


@pytest.fixture(scope="module")
def server() -> Iterator[FhirTestServer]:
    with FhirTestServer() as fhir:
        yield fhir


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, server: FhirTestServer) -> Iterator[FlaskClient]:
    app = _app(tmp_path_factory, FHIR_SERVERS=server.base_url)
    yield app.test_client()
    app.extensions["cds_runtime"].store.close()


def _templates(hook: str) -> dict[str, str]:
    service = next(s for s in default_services().values() if s.hook == hook)
    return dict(service.prefetch)


def _call(client: FlaskClient, name: str, hook: str, server: FhirTestServer | None = None) -> list[dict[str, Any]]:
    fixture = load_fixture(name)
    if server is None:
        body = build_request(fixture, hook, templates=_templates(hook))
    else:
        server.resources = record_resources(shift_fixture(fixture))
        body = build_request(fixture, hook, templates=_templates(hook), prefetch=False, fhir_server=server.base_url)
    response = client.post(PATHS[hook], json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    return cards


def _card(cards: list[dict[str, Any]], card_id: str) -> dict[str, Any]:
    found = [c for c in cards if c["source"]["topic"]["code"] == card_id]
    assert found, f"no {card_id} in {[c['source']['topic']['code'] for c in cards]}"
    return found[0]


def _suggestion_types(card: dict[str, Any]) -> list[str]:
    return [a["type"] for s in card.get("suggestions", []) for a in s.get("actions", [])]


@pytest.mark.parametrize("fallback", [False, True], ids=["prefetch", "fhir-fallback"])
@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("name", NAMES)
def test_issue12_patients_get_the_expected_cards(client: FlaskClient, server: FhirTestServer, name: str, hook: str,
                                                 fallback: bool) -> None:
    cards = _call(client, name, hook, server if fallback else None)
    got = sorted(c["source"]["topic"]["code"] for c in cards)
    assert got == sorted(load_fixture(name)["expected"][hook])
    if fallback:
        assert server.requests, "the FHIR server was not asked"


@pytest.mark.parametrize("fallback", [False, True], ids=["prefetch", "fhir-fallback"])
def test_pregnancy_is_named_and_the_ivig_order_is_not_offered_for_removal(
        client: FlaskClient, server: FhirTestServer, fallback: bool) -> None:
    card = _card(_call(client, "i12-pregnant-asys-ild", "order-sign", server if fallback else None),
                 "ivig-not-first-line")
    assert "pregnan" in card["detail"].lower()
    assert "mycophenolate" in card["detail"].lower()
    assert "delete" not in _suggestion_types(card)


def test_without_pregnancy_the_removal_is_offered(client: FlaskClient) -> None:
    card = _card(_call(client, "i12-premedication-steroid", "order-sign"), "ivig-not-first-line")
    assert "delete" in _suggestion_types(card)
    assert "pregnan" not in card["detail"].lower()


def test_premedication_is_shown_as_not_counted(client: FlaskClient) -> None:
    card = _card(_call(client, "i12-premedication-steroid", "order-sign"), "ivig-not-first-line")
    assert "premedication" in card["detail"].lower()


def test_mda5_without_immunosuppression_is_a_warning(client: FlaskClient) -> None:
    card = _card(_call(client, "i12-mda5-no-therapy", "order-sign"), "mda5-ild-ivig-adjunct")
    assert card["indicator"] == "warning"


def test_no_dose_from_an_old_weight(client: FlaskClient) -> None:
    card = _card(_call(client, "i12-prior-ivig-stale-weight", "order-sign"), "ivig-adjunct-in-context")
    detail = card["detail"]
    assert "128" not in detail  # 2 g/kg x 64 kg would be 128 g: never computed from a 200-day-old weight
    assert "64" in detail and "out of date" in detail.lower()


def test_repeated_ivig_courses_are_named(client: FlaskClient) -> None:
    card = _card(_call(client, "i12-prior-ivig-stale-weight", "order-sign"), "ivig-adjunct-in-context")
    assert "3 IVIG courses" in card["detail"]


@pytest.mark.parametrize("name", ["i12-pl7-ro52-stable-ild", "i12-no-birthdate-pft-ordered"])
def test_no_pft_order_after_recent_pfts_or_an_existing_order(client: FlaskClient, name: str) -> None:
    card = _card(_call(client, name, "order-sign"), "ild-monitoring")
    assert "create" not in _suggestion_types(card)


def test_pft_order_offered_without_recent_pfts(client: FlaskClient) -> None:
    card = _card(_call(client, "i12-premedication-steroid", "order-sign"), "ild-monitoring")
    assert "create" in _suggestion_types(card)


def test_unknown_birth_date_is_a_data_note(client: FlaskClient) -> None:
    cards = _call(client, "i12-no-birthdate-pft-ordered", "order-sign")
    assert any("date of birth" in c["detail"].lower() for c in cards)


@pytest.mark.parametrize("name", ["i12-ivig-for-itp", "i12-child-jdm"])
def test_other_indication_or_child_gets_only_the_safety_card_and_no_removal(client: FlaskClient, name: str) -> None:
    cards = _call(client, name, "order-sign")
    assert [c["source"]["topic"]["code"] for c in cards] == ["ivig-safety"]
    assert all("delete" not in _suggestion_types(c) for c in cards)
