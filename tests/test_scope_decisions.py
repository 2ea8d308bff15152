"""Deciding who is in scope when data is missing, and what alone does not trigger the safety card."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhir_server import FhirTestServer
from flask import Flask

from cds_service.devtools.fixtures import build_request, load_fixture, record_resources, shift_fixture
from cds_service.engine.services import default_services

SIGN = "/cds-services/ivig-order-sign"


def _templates() -> dict[str, str]:
    return dict(default_services()["ivig-order-sign"].prefetch)


def test_unreadable_conditions_are_a_412_not_a_silent_empty_answer(make_app: Callable[..., Flask]) -> None:
    """Antibodies negative and the conditions query failing: whether the patient has ILD cannot be
    known, so `{"cards": []}` would be silent wrong advice; the spec's 412 names the key."""
    fixture = load_fixture("pl7-positive-superseded-by-negative")
    with FhirTestServer(record_resources(shift_fixture(fixture))) as server:
        server.override("Condition", status=500)
        keep = [k for k in _templates() if k != "conditions"]
        body = build_request(fixture, "order-sign", templates=_templates(), prefetch=keep,
                             fhir_server=server.base_url)
        app = make_app(CONTENT_POLICY="all", FHIR_SERVERS=server.origin)
        response = app.test_client().post(SIGN, json=body)
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("conditions" in issue["diagnostics"] for issue in outcome["issue"])


def test_a_kidney_disease_diagnosis_alone_does_not_fire_the_safety_card(make_app: Callable[..., Flask]) -> None:
    fixture = load_fixture("jo1-quantity-m3311-mmf-coordered")
    expected = set(fixture["expected"]["order-sign"])
    record: dict[str, Any] = fixture["record"]
    record["entry"].append({"resource": {
        "resourceType": "Condition", "id": "ckd-only", "clinicalStatus": {"coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "N18.30"}]},
        "subject": {"reference": f"Patient/{fixture['patientId']}"}}})
    body = build_request(fixture, "order-sign", templates=_templates())
    cards = make_app(CONTENT_POLICY="all").test_client().post(SIGN, json=body).get_json()["cards"]
    ids = {c["source"]["topic"]["code"] for c in cards}
    assert "ivig-safety" not in expected
    assert ids == expected


def test_a_range_given_as_text_grades_a_quantity() -> None:
    from datetime import date

    from cds_service.clinical.facts import extract
    from cds_service.terminology import Terminology

    observation = {"resourceType": "Observation", "id": "pl7", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "105551-6"}]},
                   "effectiveDateTime": "2026-11-01",
                   "valueQuantity": {"value": 75, "unit": "U"},
                   "referenceRange": [{"text": "Negative: <20 U"}]}
    from cds_service.engine.content.parameters import load_parameters

    facts = extract([observation], Terminology.load("cards/valuesets"), date(2026, 11, 22), load_parameters("cards"))
    assert facts.antibodies["pl7"].status == "strong-positive"
