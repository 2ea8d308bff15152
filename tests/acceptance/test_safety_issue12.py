"""ivig-safety as the prescribing information puts it (issue 12 item 8), through the HTTP endpoint:
contraindicated only with anti-IgA antibodies or hypersensitivity to immune globulin / blood products;
IgA deficiency by the selective-deficiency level (7 mg/dL = 0.07 g/L) is a warning; an IgA just below the
lab's range is a fact; boxed-warning predisposing factors alone are info and named in the summary; an
acute VTE is named as acute; product statements only for that product; the new prefetch keys
(allergies, devices) are in discovery and fetched when missing (item 11).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from flask.testing import FlaskClient

from acceptance.ehr import FhirServer
from acceptance.support import (
    HOOKS,
    ICD10CM,
    LOINC,
    NDC,
    POSITIVE_SNOMED,
    PRIVIGEN_NDC11,
    SNOMED,
    TODAY,
    Record,
    ago,
    call,
    card,
    coding,
    concept,
    draft,
    hook_request,
    ids,
    interp,
    new_app,
    same_cards,
)

ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
IGA = concept(coding(LOINC, "2458-8", "IgA [Mass/volume] in Serum or Plasma"))
OCTAGAM = concept(coding(NDC, "0069-6550-20"), text="Octagam 10% immune globulin IV 10 g/100 mL")
GENERIC_IVIG = concept(text="Immune globulin intravenous (human) 10% IV infusion")


def antibody_only(pid: str, age: int = 54) -> Record:
    """In the clinical scope by a positive anti-PL-12 alone (no ILD, no myositis): no other card fires,
    so the ivig-safety card is the whole answer. Normal renal labs within 30 days."""
    r = Record(pid, "Ilse", "Immunglobulin")
    r.patient["birthDate"] = date(TODAY.year - age, 1, 1).isoformat()  # exactly `age` years old today
    r.obs(f"{pid}-pl12", concept(coding(LOINC, "33771-7", "PL-12 Ab [Presence] in Serum")), days=40,
          valueCodeableConcept=POSITIVE_SNOMED)
    r.renal_ok()
    return r


def iga(r: Record, value: float, unit: str, low: float | None = None, comparator: str | None = None) -> None:
    qty: dict[str, Any] = {"value": value, "unit": unit}
    if comparator:
        qty["comparator"] = comparator
    extra = {"referenceRange": [{"low": {"value": low, "unit": unit}}]} if low is not None else {}
    r.obs(f"{r.pid}-iga", IGA, days=15, valueQuantity=qty, **extra)


def allergy(r: Record, aid: str, substance: dict[str, Any], reaction: str | None = "Anaphylaxis",
            clinical: str = "active", verification: str = "confirmed") -> None:
    resource: dict[str, Any] = {
        "resourceType": "AllergyIntolerance", "id": aid, "patient": r.subject, "code": substance,
        "clinicalStatus": concept(coding(ALLERGY_CLINICAL, clinical)),
        "verificationStatus": concept(coding(ALLERGY_VERIFICATION, verification)),
        "category": ["medication"], "recordedDate": ago(700)}
    if reaction:
        resource["reaction"] = [{"manifestation": [concept(text=reaction)], "severity": "severe"}]
    r.add(resource)


def answer(client: FlaskClient, templates: dict[str, dict[str, str]], r: Record,
           medication: dict[str, Any] = PRIVIGEN_NDC11, hook: str = "order-sign") -> list[dict[str, Any]]:
    ivig = draft(r.pid, f"{r.pid}-ivig", medication)
    return call(client, hook_request(hook, r, [ivig], templates=templates[hook]))


# --- IgA and the contraindication -----------------------------------------------------------------------

def test_critical_only_with_hypersensitivity_to_immune_globulin(client: FlaskClient,
                                                               templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-hs")
    iga(r, 3, "mg/dL", low=70)
    allergy(r, "acc-i12-hs-al", concept(text="Immune globulin (human) — Gamunex"), "Anaphylaxis")
    for hook in HOOKS:
        cards = answer(client, templates, r, hook=hook)
        same_cards(ids(cards), [("ivig-safety", "critical")])
        safety = card(cards, "ivig-safety")
        assert "contraindicated" in safety["summary"] and "AllergyIntolerance/acc-i12-hs-al" in safety["detail"]


def test_critical_with_positive_anti_iga_antibodies(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-aiga")
    iga(r, 0.05, "g/L")
    r.obs("acc-i12-aiga-ab", concept(text="Anti-IgA antibody (IgG class), serum"), days=30,
          valueQuantity={"value": 1.8, "unit": "index"}, referenceRange=[{"high": {"value": 1.0}}],
          interpretation=interp("H"))
    cards = answer(client, templates, r)
    same_cards(ids(cards), [("ivig-safety", "critical")])
    assert "anti-IgA antibodies" in card(cards, "ivig-safety")["summary"]


@pytest.mark.parametrize("value, unit, comparator", [(5, "mg/dL", None), (0.05, "g/L", None), (7, "mg/dL", "<"),
                                                     (40, "mg/L", None)])
def test_iga_below_the_deficiency_level_is_a_warning(client: FlaskClient, templates: dict[str, dict[str, str]],
                                                     value: float, unit: str, comparator: str | None) -> None:
    r = antibody_only(f"acc-i12-iga-{unit.replace('/', '')}-{comparator or 'eq'}")
    iga(r, value, unit, comparator=comparator)
    # Refuted and resolved allergy entries do not make it a contraindication.
    allergy(r, f"{r.pid}-ref", concept(text="IVIG"), verification="refuted")
    allergy(r, f"{r.pid}-res", concept(text="Fresh frozen plasma"), clinical="resolved")
    cards = answer(client, templates, r)
    same_cards(ids(cards), [("ivig-safety", "warning")])
    summary = card(cards, "ivig-safety")["summary"]
    assert "IgA deficiency" in summary and "anti-IgA" in summary and "contraindicated" not in summary


def test_iga_below_the_range_but_above_the_level_fires_nothing(client: FlaskClient,
                                                               templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-iga60")
    iga(r, 60, "mg/dL", low=70)
    for hook in HOOKS:
        assert answer(client, templates, r, hook=hook) == []


def test_iga_below_the_range_is_shown_when_the_card_fires_for_another_reason(
        client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-iga60-hf")
    iga(r, 60, "mg/dL", low=70)
    r.cond("acc-i12-iga60-hf-hf", concept(coding(ICD10CM, "I50.32", "Chronic diastolic heart failure")))
    cards = answer(client, templates, r)
    same_cards(ids(cards), [("ivig-safety", "warning")])
    safety = card(cards, "ivig-safety")
    assert "Observation/acc-i12-iga60-hf-iga" in safety["detail"] and "IgA deficiency" not in safety["summary"]


# --- predisposing factors: info, named -----------------------------------------------------------------

def test_diabetes_and_age_72_with_fine_renal_labs_is_info_and_named(client: FlaskClient,
                                                                    templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-dm72", age=72)
    r.cond("acc-i12-dm72-dm", concept(coding(ICD10CM, "E11.65", "Type 2 diabetes mellitus with hyperglycemia")))
    for hook in HOOKS:
        cards = answer(client, templates, r, hook=hook)
        same_cards(ids(cards), [("ivig-safety", "info")])
        safety = card(cards, "ivig-safety")
        assert "diabetes" in safety["summary"] and "age 72" in safety["summary"]
        assert "renal and thrombosis risk" in safety["summary"]
        assert "hydration" in safety["detail"] and "Minimum dose and infusion rate" in safety["detail"]


def test_catheter_device_and_estrogen_are_info(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-cvc")
    r.add({"resourceType": "Device", "id": "acc-i12-cvc-dev", "status": "active", "patient": r.subject,
           "type": concept(text="Tunneled central venous catheter")})
    r.med_statement("acc-i12-cvc-hrt", concept(text="Estradiol 1 mg oral tablet"), status="active", days=60)
    cards = answer(client, templates, r)
    same_cards(ids(cards), [("ivig-safety", "info")])
    safety = card(cards, "ivig-safety")
    assert "central venous catheter" in safety["summary"] and "Device/acc-i12-cvc-dev" in safety["detail"]
    assert "MedicationStatement/acc-i12-cvc-hrt" in safety["detail"]


def test_a_warning_finding_raises_the_predisposing_card(client: FlaskClient,
                                                        templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-dm-egfr", age=70)
    r.cond("acc-i12-dm-egfr-dm", concept(text="Diabetes mellitus type 2"))
    r.obs("acc-i12-dm-egfr-e2", concept(coding(LOINC, "98979-8")), days=2,
          valueQuantity={"value": 41, "unit": "mL/min/1.73m2"})
    same_cards(ids(answer(client, templates, r)), [("ivig-safety", "warning")])


# --- acute VTE ------------------------------------------------------------------------------------------

def test_acute_vte_is_named_as_acute(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-avte")
    r.cond("acc-i12-avte-pe", concept(coding(SNOMED, "59282003", "Pulmonary embolism")), days=21)
    cards = answer(client, templates, r)
    same_cards(ids(cards), [("ivig-safety", "warning")])
    safety = card(cards, "ivig-safety")
    assert "acute VTE" in safety["summary"] and "VTE history" not in safety["summary"]
    assert "Acute VTE" in safety["detail"]


def test_an_old_vte_is_history(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-ovte")
    r.cond("acc-i12-ovte-pe", concept(coding(ICD10CM, "Z86.711")), days=20)  # a personal-history code
    cards = answer(client, templates, r)
    summary = card(cards, "ivig-safety")["summary"]
    assert "VTE history" in summary and "acute" not in summary


# --- product-specific statements ------------------------------------------------------------------------

def test_product_statements_only_for_that_product(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-prod", age=70)
    details = {}
    for name, medication in (("octagam", OCTAGAM), ("privigen", PRIVIGEN_NDC11), ("generic", GENERIC_IVIG)):
        details[name] = card(answer(client, templates, r, medication), "ivig-safety")["detail"]
    assert "maltose" in details["octagam"] and "Octagam 10%:" in details["octagam"]
    assert "L-proline" in details["privigen"] and "maltose" not in details["privigen"]
    for word in ("maltose", "L-proline", "Octagam 10%:", "Privigen:"):
        assert word not in details["generic"]


# --- the new prefetch keys ------------------------------------------------------------------------------

def test_discovery_lists_allergies_and_devices(templates: dict[str, dict[str, str]]) -> None:
    for hook in HOOKS:
        assert templates[hook]["allergies"] == "AllergyIntolerance?patient={{context.patientId}}"
        assert templates[hook]["devices"] == "Device?patient={{context.patientId}}"


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()


def test_allergies_and_devices_are_fetched_when_missing(clean_env: None, tmp_path_factory: pytest.TempPathFactory,
                                                        fhir_server: FhirServer,
                                                        templates: dict[str, dict[str, str]]) -> None:
    app = new_app(tmp_path_factory.mktemp("i12"), FHIR_SERVERS=f"{fhir_server.base}/", FHIR_DEADLINE_S=3.0)
    r = antibody_only("acc-i12-fetch")
    allergy(r, "acc-i12-fetch-al", concept(text="Blood products"), "Urticaria and wheeze after transfusion")
    fhir_server.reset(r.resources)
    ivig = draft(r.pid, "acc-i12-fetch-ivig", PRIVIGEN_NDC11)
    body = hook_request("order-sign", r, [ivig], templates=templates["order-sign"], omit=("allergies", "devices"),
                        fhirServer=fhir_server.base)
    cards = call(app.test_client(), body)
    same_cards(ids(cards), [("ivig-safety", "critical")])
    queried = {path.split("?")[0].removeprefix("/fhir/") for path, _ in fhir_server.requests}
    assert {"AllergyIntolerance", "Device"} <= queried


def test_allergies_that_cannot_be_read_are_named(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    r = antibody_only("acc-i12-noall")
    ivig = draft(r.pid, "acc-i12-noall-ivig", PRIVIGEN_NDC11)
    body = hook_request("order-sign", r, [ivig], templates=templates["order-sign"], omit=("allergies",))
    cards = call(client, body)
    same_cards(ids(cards), [("ivig-safety", "info")])
    assert "Allergies could not be retrieved" in card(cards, "ivig-safety")["detail"]
