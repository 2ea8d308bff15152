"""Order scope (issue 3 item 2): which draft orders are IVIG, read leniently from real-client drafts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cds_service.clinical.orders import DraftOrder, ivig_orders
from cds_service.settings import DEFAULT_CARDS_DIR
from cds_service.terminology import Terminology

NDC = "http://hl7.org/fhir/sid/ndc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
LOCAL = "https://pharmacy.example.org/formulary"
SUBCUTANEOUS = {"coding": [{"system": SNOMED, "code": "34206005", "display": "Subcutaneous route"}]}
INTRAVENOUS = {"coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}]}


@pytest.fixture(scope="module")
def t() -> Terminology:
    return Terminology.load(DEFAULT_CARDS_DIR / "valuesets")


def draft(mid: str = "ivig-1", *, code: str | None = None, system: str = NDC, text: str | None = None,
          route: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "MedicationRequest", "id": mid, "status": "draft",
                                "intent": "order", "subject": {"reference": "Patient/p1"}}
    concept: dict[str, Any] = {}
    if code is not None:
        concept["coding"] = [{"system": system, "code": code}]
    if text is not None:
        concept["text"] = text
    if concept:
        resource["medicationCodeableConcept"] = concept
    if route is not None:
        resource["dosageInstruction"] = [{"route": route}]
    resource.update(extra)
    return resource


def sign(t: Terminology, *resources: dict[str, Any], entries: list[Any] | None = None) -> list[DraftOrder]:
    return ivig_orders("order-sign", list(resources), [], t, entries)


def is_ivig(t: Terminology, resource: dict[str, Any]) -> bool:
    found = sign(t, resource)
    assert found == ivig_orders("order-select", [resource], [f"{resource['resourceType']}/{resource['id']}"], t)
    return bool(found)


# --- IVIG by code --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [
    "44206-439",        # Privigen, product code (5-3)
    "44206-0439",       # product code, 5-4
    "44206-439-10",     # package code, 10-digit 5-3-2
    "44206-0439-10",    # package code, 11-digit 5-4-2
    "44206043910",      # package code, 11 digits without hyphens
    "0944-2700",        # 4-4 product code
    "0944-2700-02",     # package code, 10-digit 4-4-2
    "00944270002",      # the same, 11 digits
    "61953-0004-1",     # package code, 10-digit 5-4-1
])
def test_ivig_by_ndc_product_and_package_codes(t: Terminology, code: str) -> None:
    assert is_ivig(t, draft(code=code))


def test_ivig_by_ndc_with_oid_system(t: Terminology) -> None:
    assert is_ivig(t, draft(code="44206-439", system="urn:oid:2.16.840.1.113883.6.69"))


def test_ndc_of_another_product_is_not_ivig(t: Terminology) -> None:
    assert not is_ivig(t, draft(code="44206-999-10"))
    assert not is_ivig(t, draft(code="0944-2850-01"))  # listed as Ig that is not IVIG


def test_ivig_ndc_code_in_another_system_is_not_ivig(t: Terminology) -> None:
    assert not is_ivig(t, draft(code="44206-439", system=LOCAL))


# --- IVIG by text --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "IVIG", "IVIg 0.4 g/kg", "IV IG", "Immune globulin intravenous (human) 10%", "Intravenous immunoglobulin",
    "Immune Globulin IV", "IGIV", "Privigen 10% IV infusion", "Gammagard Liquid", "Gamunex-C", "Octagam 10%",
    "Panzyga", "Bivigam", "Flebogamma DIF", "Gammaplex", "Asceniv", "Gammaked",
])
def test_ivig_by_text_alias_and_brand_name(t: Terminology, text: str) -> None:
    assert is_ivig(t, draft(text=text))


def test_ivig_by_coding_display_with_local_code(t: Terminology) -> None:
    resource = draft()
    resource["medicationCodeableConcept"] = {"coding": [{"system": LOCAL, "code": "F-1234",
                                                         "display": "Privigen 10% liquid"}]}
    assert is_ivig(t, resource)


def test_ivig_by_medication_reference_display(t: Terminology) -> None:
    resource = draft(medicationReference={"display": "Octagam 10% (immune globulin intravenous)"})
    assert is_ivig(t, resource)


def test_ivig_with_intravenous_route(t: Terminology) -> None:
    assert is_ivig(t, draft(text="Immune globulin", route=INTRAVENOUS))


def test_draft_order_carries_reference_and_display(t: Terminology) -> None:
    (order,) = sign(t, draft("abc", code="44206-439", text="Privigen 10% IV infusion"))
    assert order.reference == "MedicationRequest/abc"
    assert order.display == "Privigen 10% IV infusion"
    assert order.resource["id"] == "abc"


# --- IVIG via a Medication resource --------------------------------------------------------------------


def medication(mid: str, *, code: str | None = "44206-0439-10", text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if code:
        concept["coding"] = [{"system": NDC, "code": code}]
    if text:
        concept["text"] = text
    return {"resourceType": "Medication", "id": mid, "code": concept}


def test_ivig_via_contained_medication(t: Terminology) -> None:
    resource = draft(contained=[medication("med1")], medicationReference={"reference": "#med1"})
    assert is_ivig(t, resource)


def test_contained_medication_of_another_drug_is_not_ivig(t: Terminology) -> None:
    resource = draft(contained=[medication("med1", code=None, text="Amoxicillin 500 mg")],
                     medicationReference={"reference": "#med1"})
    assert not is_ivig(t, resource)


def test_unresolvable_contained_reference_is_not_ivig(t: Terminology) -> None:
    resource = draft(contained=[medication("other")], medicationReference={"reference": "#med1"})
    assert not is_ivig(t, resource)


def test_ivig_via_bundled_medication_by_type_and_id(t: Terminology) -> None:
    order = draft(medicationReference={"reference": "Medication/med-ivig"})
    found = sign(t, order, medication("med-ivig", code=None, text="Gammagard Liquid"))
    assert [o.reference for o in found] == ["MedicationRequest/ivig-1"]


def test_ivig_via_bundled_medication_by_full_url(t: Terminology) -> None:
    med = medication("med-ivig")
    order = draft(medicationReference={"reference": "urn:uuid:6b1b2c1e-0000-4000-8000-000000000001"})
    entries = [{"fullUrl": "urn:uuid:6b1b2c1e-0000-4000-8000-000000000001", "resource": med},
               {"fullUrl": "urn:uuid:6b1b2c1e-0000-4000-8000-000000000002", "resource": order}]
    assert sign(t, order, med, entries=entries)
    # order-select: selecting the request is enough, the Medication need not be selected
    assert ivig_orders("order-select", [order, med], ["MedicationRequest/ivig-1"], t, entries)


def test_bundled_medication_is_not_an_order_itself(t: Terminology) -> None:
    med = medication("med-ivig")
    assert sign(t, med) == []
    assert ivig_orders("order-select", [med], ["Medication/med-ivig"], t) == []


def test_reference_to_a_missing_medication_is_not_ivig(t: Terminology) -> None:
    assert not sign(t, draft(medicationReference={"reference": "Medication/nowhere"}))


# --- not IVIG ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "Hizentra 20% (immune globulin subcutaneous, human)", "Hizentra", "Cuvitru 20%", "Xembify", "HyQvia",
    "Immune globulin subcutaneous", "SCIG 10 g weekly",
])
def test_subcutaneous_products_are_not_ivig(t: Terminology, text: str) -> None:
    assert not is_ivig(t, draft(text=text))


@pytest.mark.parametrize("route", [SUBCUTANEOUS, {"text": "Subcutaneous"}, {"text": "SC"}, {"text": "subcut"}])
def test_subcutaneous_route_is_not_ivig(t: Terminology, route: dict[str, Any]) -> None:
    assert not is_ivig(t, draft(text="Immune globulin 10%", route=route))
    assert not is_ivig(t, draft(code="44206-439", route=route))


def test_subcutaneous_in_dosage_text_is_not_ivig(t: Terminology) -> None:
    resource = draft(text="Immune globulin 20%")
    resource["dosageInstruction"] = [{"text": "2 g subcutaneously weekly"}]
    assert not is_ivig(t, resource)


@pytest.mark.parametrize("text", [
    "HBIG", "Hepatitis B immune globulin (HepaGam B)", "HyperHEP B", "RhoGAM", "Rho(D) immune globulin",
    "Rabies immune globulin", "HyperRAB", "KedRAB", "Tetanus immune globulin", "CytoGam",
    "Varicella zoster immune globulin (VariZIG)", "Antithymocyte globulin (Thymoglobulin)", "WinRho SDF",
])
def test_hyperimmune_and_other_globulins_are_not_ivig(t: Terminology, text: str) -> None:
    assert not is_ivig(t, draft(text=text))


@pytest.mark.parametrize("resource", [
    draft(text="GamaSTAN S/D (immune globulin intramuscular, human)"),
    draft(text="Immune globulin (human)", route={"text": "Intramuscular"}),
    draft(text="Immune globulin (human) 0.2 mL/kg", route={"text": "IM"}),
])
def test_intramuscular_immune_globulin_is_not_ivig(t: Terminology, resource: dict[str, Any]) -> None:
    """IM immune globulin (hepatitis A / measles prophylaxis) is not intravenous: no IVIG guidance."""
    assert not is_ivig(t, resource)


def test_hyperimmune_wins_over_an_ivig_alias(t: Terminology) -> None:
    assert not is_ivig(t, draft(text="Hepatitis B immune globulin intravenous (HepaGam B) IV"))


@pytest.mark.parametrize("resource", [
    draft(text="Amoxicillin 500 mg capsule"),
    draft(code="723", system=RXNORM, text="Amoxicillin"),
    draft(),  # no medication at all (eager order-select)
    draft(medicationCodeableConcept={}),
    draft(medicationCodeableConcept={"coding": []}),
    draft(text="Immune checkpoint inhibitor"),
])
def test_other_orders_are_not_ivig(t: Terminology, resource: dict[str, Any]) -> None:
    assert not is_ivig(t, resource)


def test_eager_draft_without_medication_or_intent(t: Terminology) -> None:
    resource = {"resourceType": "MedicationRequest", "id": "d1", "status": "draft"}
    assert ivig_orders("order-select", [resource], ["MedicationRequest/d1"], t) == []


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "revoked"])
def test_withdrawn_orders_are_not_in_scope(t: Terminology, status: str) -> None:
    assert not sign(t, draft(code="44206-439", status=status))


def test_non_medication_orders_are_not_ivig(t: Terminology) -> None:
    service_request = {"resourceType": "ServiceRequest", "id": "sr1", "status": "draft",
                       "code": {"text": "IVIG infusion nursing"}}
    assert not sign(t, service_request)


def test_medication_order_like_resource_is_read(t: Terminology) -> None:
    resource = draft(text="Privigen")
    resource["resourceType"] = "MedicationOrder"
    assert [o.reference for o in sign(t, resource)] == ["MedicationOrder/ivig-1"]


# --- scope: selections vs every entry ------------------------------------------------------------------


def test_order_select_considers_only_selections(t: Terminology) -> None:
    ivig = draft("ivig-1", text="IVIG")
    other = draft("pred-1", code="8640", system=RXNORM, text="Prednisone")
    assert ivig_orders("order-select", [other, ivig], ["MedicationRequest/pred-1"], t) == []
    found = ivig_orders("order-select", [other, ivig], ["MedicationRequest/ivig-1"], t)
    assert [o.reference for o in found] == ["MedicationRequest/ivig-1"]
    assert ivig_orders("order-select", [other, ivig], [], t) == []


def test_order_select_selection_of_missing_entry_is_tolerated(t: Terminology) -> None:
    assert ivig_orders("order-select", [draft(text="IVIG")], ["MedicationRequest/not-there"], t) == []


def test_order_select_selection_needs_matching_type(t: Terminology) -> None:
    assert ivig_orders("order-select", [draft("x", text="IVIG")], ["ServiceRequest/x"], t) == []


def test_order_sign_considers_every_entry(t: Terminology) -> None:
    orders = [draft("pred-1", text="Prednisone"), draft("ivig-1", text="IVIG"),
              draft("ivig-2", code="44206-439")]
    assert [o.reference for o in sign(t, *orders)] == ["MedicationRequest/ivig-1", "MedicationRequest/ivig-2"]


# --- lenient reading of invalid R4 ---------------------------------------------------------------------


def test_category_and_reason_code_as_objects_are_tolerated(t: Terminology) -> None:
    resource = draft(text="Privigen", category={"coding": [{"code": "inpatient"}]},
                     reasonCode={"text": "ASyS-ILD"})
    del resource["intent"]
    assert is_ivig(t, resource)


def test_dosage_instruction_as_object_is_tolerated(t: Terminology) -> None:
    resource = draft(text="Privigen", dosageInstruction={"route": INTRAVENOUS, "text": "0.4 g/kg IV"})
    assert is_ivig(t, resource)
    resource["dosageInstruction"] = {"route": SUBCUTANEOUS}
    assert not is_ivig(t, resource)


@pytest.mark.parametrize("mutate", [
    lambda r: r.update(medicationCodeableConcept=[None, 5]),
    lambda r: r.update(medicationCodeableConcept={"coding": "44206-439"}),
    lambda r: r.update(medicationCodeableConcept={"coding": [{"system": NDC, "code": 44206439}]}),
    lambda r: r.update(medicationReference="Medication/x"),
    lambda r: r.update(medicationReference={"reference": ["#m"]}),
    lambda r: r.update(contained="garbage", medicationReference={"reference": "#m"}),
    lambda r: r.update(dosageInstruction=[None, "IV", {"route": 5}]),
    lambda r: r.update(id=None),
])
def test_unreadable_drafts_never_raise(t: Terminology, mutate: Any) -> None:
    resource = draft(text="Amoxicillin")
    mutate(resource)
    sign(t, resource)
    sign(t, copy.deepcopy(resource), "not a resource", None, {"no": "type"})  # type: ignore[arg-type]
