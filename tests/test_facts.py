"""Patient facts (issue 3 item 3), one rule at a time, with plain dicts: ``facts.extract(resources, t, today)``."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_service.clinical.facts import PatientFacts, extract
from cds_service.devtools.fixtures import load_fixture, record_resources
from cds_service.engine.assertion import assertion_reader
from cds_service.engine.content.parameters import load_parameters
from cds_service.settings import DEFAULT_CARDS_DIR
from cds_service.terminology import Terminology

PARAMETERS = load_parameters(Path(__file__).resolve().parent.parent / "cards")
ASSERTIONS = assertion_reader(Path(__file__).resolve().parent.parent / "cards" / "assertion-cues.yaml")

TODAY = date(2026, 11, 22)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
LOCAL = "https://lab.example.org/codes"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PATIENT = {"reference": "Patient/p1"}

# LOINC codes of the value sets (cards/valuesets).
PL7 = "33772-5"
JO1 = "11565-9"
RO52 = "53016-2"
MDA5 = "82424-3"
CREATININE = "2160-0"
EGFR = "33914-3"
IGA = "2458-8"
WEIGHT = "29463-7"
FVC_PCT = "19872-1"
FVC_L = "19868-9"
ILD_SNOMED = "233703007"
PREDNISONE = "8640"
METHYLPREDNISOLONE = "6902"
RITUXIMAB = "121191"


@pytest.fixture(scope="module")
def t() -> Terminology:
    return Terminology.load(DEFAULT_CARDS_DIR / "valuesets")


def days_ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


_counter = iter(range(1, 1_000_000))


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


def obs(code: str | None = None, *, system: str = LOINC, text: str | None = None, status: str = "final",
        when: int = 10, oid: str | None = None, **value: Any) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if code is not None:
        concept["coding"] = [{"system": system, "code": code}]
    if text is not None:
        concept["text"] = text
    resource: dict[str, Any] = {"resourceType": "Observation", "id": oid or _id("obs"), "status": status,
                                "code": concept, "subject": PATIENT, "effectiveDateTime": days_ago(when)}
    resource.update(value)
    return resource


def interp(*codes: str, text: str | None = None) -> list[dict[str, Any]]:
    concept: dict[str, Any] = {"coding": [{"system": V3, "code": c} for c in codes]}
    if text:
        concept["text"] = text
    return [concept]


def qty(value: Any, unit: str = "U/mL") -> dict[str, Any]:
    return {"value": value, "unit": unit}


def rng(low: float | None = None, high: float | None = None) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {}
    if low is not None:
        entry["low"] = {"value": low}
    if high is not None:
        entry["high"] = {"value": high}
    return [entry]


def cond(code: str | None = None, *, system: str = SNOMED, text: str | None = None,
         clinical: str | None = "active", verification: str | None = "confirmed",
         cid: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if code is not None:
        concept["coding"] = [{"system": system, "code": code}]
    if text is not None:
        concept["text"] = text
    resource: dict[str, Any] = {"resourceType": "Condition", "id": cid or _id("cond"), "code": concept,
                                "subject": PATIENT, "recordedDate": days_ago(30)}
    if clinical is not None:
        resource["clinicalStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]}
    if verification is not None:
        resource["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
    return resource


def ild(**kwargs: Any) -> dict[str, Any]:
    return cond(ILD_SNOMED, text="Interstitial lung disease", **kwargs)


def medreq(code: str | None = None, *, text: str | None = None, status: str = "active", authored: int = 20,
           route: dict[str, Any] | None = None, rtype: str = "MedicationRequest",
           mid: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if code is not None:
        concept["coding"] = [{"system": RXNORM, "code": code}]
    if text is not None:
        concept["text"] = text
    resource: dict[str, Any] = {"resourceType": rtype, "id": mid or _id("med"), "status": status,
                                "medicationCodeableConcept": concept, "subject": PATIENT}
    if rtype == "MedicationStatement":
        resource["effectiveDateTime"] = days_ago(authored)
    else:
        resource["intent"] = "order"
        resource["authoredOn"] = days_ago(authored)
    if route is not None:
        resource["dosageInstruction" if rtype != "MedicationStatement" else "dosage"] = [{"route": route}]
    return resource


def facts_of(t: Terminology, *resources: Any, draft_orders: tuple[Any, ...] = ()) -> PatientFacts:
    return extract(list(resources), t, TODAY, PARAMETERS, draft_orders=list(draft_orders), assertions=ASSERTIONS)


def status_of(t: Terminology, resource: dict[str, Any], antibody: str = "pl7") -> str:
    facts = facts_of(t, resource)
    result = facts.antibodies.get(antibody)
    assert result is not None, f"no {antibody} result read from {resource}"
    assert result.reference == f"Observation/{resource['id']}"
    return result.status


# --- antibody status: valueCodeableConcept ---------------------------------------------------------


@pytest.mark.parametrize("system,code,expected", [
    (SNOMED, "10828004", "positive"),
    (SNOMED, "260385009", "negative"),
    (LOINC, "LA6576-8", "positive"),
    (LOINC, "LA6577-6", "negative"),
    ("urn:oid:2.16.840.1.113883.6.96", "10828004", "positive"),
])
def test_antibody_value_codeable_concept(t: Terminology, system: str, code: str, expected: str) -> None:
    resource = obs(PL7, valueCodeableConcept={"coding": [{"system": system, "code": code}]})
    assert status_of(t, resource) == expected


def test_antibody_value_codeable_concept_text_only(t: Terminology) -> None:
    assert status_of(t, obs(PL7, valueCodeableConcept={"text": "Strongly positive"})) == "strong-positive"
    assert status_of(t, obs(PL7, valueCodeableConcept={"text": "Negative"})) == "negative"


def test_antibody_coded_positive_with_lab_strong_wording_is_strong(t: Terminology) -> None:
    resource = obs(PL7, valueCodeableConcept={"coding": [{"system": SNOMED, "code": "10828004"}]},
                   interpretation=interp("POS", text="Strongly positive"))
    assert status_of(t, resource) == "strong-positive"


def test_antibody_result_keeps_date_and_reference(t: Terminology) -> None:
    resource = obs(PL7, when=12, oid="ab-pl7", valueString="Positive")
    result = facts_of(t, resource).antibodies["pl7"]
    assert result.date == TODAY - timedelta(days=12)
    assert result.reference == "Observation/ab-pl7"


# --- antibody status: interpretation ---------------------------------------------------------------


@pytest.mark.parametrize("code,expected", [
    ("POS", "positive"), ("NEG", "negative"), ("IND", "equivocal"), ("E", "equivocal"),
    ("A", "positive"), ("H", "positive"), ("DET", "positive"), ("ND", "negative"),
])
def test_antibody_interpretation_only(t: Terminology, code: str, expected: str) -> None:
    assert status_of(t, obs(PL7, interpretation=interp(code))) == expected


@pytest.mark.parametrize("code", ["HH", "HU"])
def test_critical_high_interpretation_is_not_strong(t: Terminology, code: str) -> None:
    assert status_of(t, obs(PL7, interpretation=interp(code))) == "positive"


def test_interpretation_without_any_value_or_code_is_unknown(t: Terminology) -> None:
    assert status_of(t, obs(PL7)) == "unknown"


# --- antibody status: valueString -------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("Strongly positive", "strong-positive"),
    ("Positive", "positive"),
    ("Weak positive", "weak-positive"),
    ("Borderline", "equivocal"),
    ("Negative", "negative"),
    ("+++", "strong-positive"),
    ("++", "positive"),
    ("+", "weak-positive"),
    ("Neg", "negative"),
    ("NEGATIVE", "negative"),
    ("Equivocal", "equivocal"),
    ("Not detected", "negative"),
    ("None detected", "negative"),
    ("No antibody detected", "negative"),
    ("Not reactive", "negative"),
    ("Nonreactive", "negative"),
])
def test_antibody_value_string(t: Terminology, text: str, expected: str) -> None:
    assert status_of(t, obs(PL7, valueString=text)) == expected


def test_unrecognised_value_string_falls_back_to_interpretation(t: Terminology) -> None:
    assert status_of(t, obs(PL7, valueString="see comment", interpretation=interp("POS"))) == "positive"
    assert status_of(t, obs(PL7, valueString="see comment")) == "unknown"


# --- antibody status: valueQuantity against referenceRange -----------------------------------------


@pytest.mark.parametrize("value,high,expected", [
    (5, 10, "negative"),
    (10, 10, "negative"),
    (11, 10, "positive"),
    (29.9, 10, "positive"),
    (30, 10, "strong-positive"),
    (164, 29, "strong-positive"),
])
def test_antibody_quantity_graded_by_high_bound(t: Terminology, value: float, high: float,
                                                expected: str) -> None:
    assert status_of(t, obs(PL7, valueQuantity=qty(value), referenceRange=rng(high=high))) == expected


def test_antibody_quantity_with_lab_strong_text_is_strong(t: Terminology) -> None:
    resource = obs(PL7, valueQuantity=qty(15), referenceRange=rng(high=10),
                   interpretation=interp("POS", text="Strongly positive"))
    assert status_of(t, resource) == "strong-positive"


def test_antibody_quantity_lab_call_wins_on_sign(t: Terminology) -> None:
    resource = obs(PL7, valueQuantity=qty(15), referenceRange=rng(high=10), interpretation=interp("E"))
    assert status_of(t, resource) == "equivocal"


def test_antibody_quantity_range_from_text(t: Terminology) -> None:
    resource = obs(PL7, valueQuantity=qty(45), referenceRange=[{"text": "<11"}])
    assert status_of(t, resource) == "strong-positive"


def test_antibody_quantity_without_range_is_unknown(t: Terminology) -> None:
    assert status_of(t, obs(PL7, valueQuantity=qty(45))) == "unknown"


# --- newest final result wins; non-final results are ignored ---------------------------------------


@pytest.mark.parametrize("status", ["final", "amended", "corrected"])
def test_newest_final_amended_or_corrected_result_wins(t: Terminology, status: str) -> None:
    older = obs(PL7, when=400, valueString="Positive")
    newer = obs(PL7, when=20, status=status, valueString="Negative")
    for order in ((older, newer), (newer, older)):
        facts = facts_of(t, *order)
        assert facts.antibodies["pl7"].status == "negative"
        assert facts.antibodies["pl7"].reference == f"Observation/{newer['id']}"
        assert not facts.antibody_positive("pl7")


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "preliminary", "registered"])
def test_non_final_results_are_ignored(t: Terminology, status: str) -> None:
    good = obs(PL7, when=400, valueString="Negative")
    ignored = obs(PL7, when=5, status=status, valueString="Strongly positive")
    facts = facts_of(t, good, ignored)
    assert facts.antibodies["pl7"].status == "negative"
    alone = facts_of(t, ignored)
    assert "pl7" not in alone.antibodies
    assert not alone.has_antibody_results


# --- matching: code first, then alias text -----------------------------------------------------------


def test_antibody_matched_by_code(t: Terminology) -> None:
    facts = facts_of(t, obs(JO1, valueString="Positive"), obs(RO52, valueString="Positive"),
                     obs(MDA5, valueString="Negative"))
    assert facts.antibodies["jo1"].status == "positive"
    assert facts.antibodies["ro52"].status == "positive"
    assert facts.antibodies["mda5"].status == "negative"


@pytest.mark.parametrize("text,antibody", [
    ("Anti-PL-7 Ab", "pl7"), ("PL7 antibody", "pl7"), ("Threonyl-tRNA synthetase Ab", "pl7"),
    ("Anti-MDA5", "mda5"), ("CADM-140 antibody", "mda5"), ("Anti-Jo-1", "jo1"), ("Ro52 (TRIM21) Ab", "ro52"),
])
def test_antibody_matched_by_alias_text_with_a_local_code(t: Terminology, text: str, antibody: str) -> None:
    resource = obs("LOCAL-123", system=LOCAL, text=text, valueString="Positive")
    assert status_of(t, resource, antibody) == "positive"


def test_antibodies_read_from_panel_components(t: Terminology) -> None:
    panel = obs("LOCAL-PANEL", system=LOCAL, text="Extended myositis immunoblot", oid="panel", component=[
        {"code": {"coding": [{"system": LOINC, "code": PL7}]}, "valueString": "Strongly positive"},
        {"code": {"coding": [{"system": LOINC, "code": RO52}]}, "valueQuantity": qty(35, "U"),
         "referenceRange": rng(high=10)},
        {"code": {"text": "Anti-MDA5"}, "interpretation": interp("NEG")},
    ])
    facts = facts_of(t, panel)
    assert facts.antibodies["pl7"].status == "strong-positive"
    assert facts.antibodies["ro52"].status == "strong-positive"
    assert facts.antibodies["mda5"].status == "negative"
    assert facts.antibodies["pl7"].reference == "Observation/panel"


def test_known_code_wins_over_misleading_text(t: Terminology) -> None:
    resource = obs(JO1, text="PL-7 antibody", valueString="Positive")  # the code says Jo-1
    facts = facts_of(t, resource)
    assert set(facts.antibodies) == {"jo1"}


def test_ro60_text_is_not_ro52(t: Terminology) -> None:
    resource = obs("LOCAL-9", system=LOCAL, text="SSA Ro60 / Ro52 panel Ro60", valueString="Positive")
    assert "ro52" not in facts_of(t, resource).antibodies


def test_unrelated_observation_is_not_an_antibody(t: Terminology) -> None:
    facts = facts_of(t, obs("718-7", text="Hemoglobin", valueQuantity=qty(12, "g/dL")))
    assert not facts.antibodies and not facts.notes


# --- equivocal is not positive -----------------------------------------------------------------------


def test_equivocal_is_not_positive(t: Terminology) -> None:
    facts = facts_of(t, obs(PL7, valueString="Borderline"), ild())
    assert facts.antibodies["pl7"].status == "equivocal"
    assert not facts.antibody_positive("pl7")
    assert not facts.any_antibody_positive
    assert not facts.asys
    assert facts.has_antibody_results


# --- conditions: clinical and verification status ----------------------------------------------------


@pytest.mark.parametrize("clinical", ["active", "recurrence", "relapse", None])
def test_condition_counts_when_current(t: Terminology, clinical: str | None) -> None:
    facts = facts_of(t, ild(clinical=clinical))
    assert facts.ild


@pytest.mark.parametrize("clinical", ["inactive", "resolved", "remission"])
def test_condition_does_not_count_when_not_current(t: Terminology, clinical: str) -> None:
    assert not facts_of(t, ild(clinical=clinical)).ild


@pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
def test_refuted_or_erroneous_condition_never_counts(t: Terminology, verification: str) -> None:
    assert not facts_of(t, ild(verification=verification)).ild
    vte = cond("Z86.718", system=ICD, clinical="resolved", verification=verification)
    assert not facts_of(t, vte).has("vte_history")


@pytest.mark.parametrize("clinical", ["active", "inactive", "resolved", None])
def test_vte_history_counts_whatever_the_clinical_status(t: Terminology, clinical: str | None) -> None:
    facts = facts_of(t, cond("Z86.718", system=ICD, clinical=clinical))
    assert facts.has("vte_history")


def test_condition_status_as_plain_code_string_is_read(t: Terminology) -> None:
    resource = ild()
    resource["clinicalStatus"] = "resolved"
    assert not facts_of(t, resource).ild


@pytest.mark.parametrize("resource,name", [
    (cond("J84.9", system=ICD), "ild"),
    (cond("M33.11", system=ICD), "ild"),
    (cond("M33.11", system=ICD), "myositis"),
    (cond("M33.22", system=ICD), "myositis"),
    (cond(text="Dermatomyositis"), "myositis"),
    (cond("R13.10", system=ICD), "dysphagia"),
    (cond("D80.2", system=ICD), "iga_deficiency"),
    (cond("I50.9", system=ICD), "heart_failure"),
    (cond("N18.3", system=ICD), "kidney_disease"),
    (cond(text="Organizing pneumonia"), "ild"),
])
def test_condition_value_sets(t: Terminology, resource: dict[str, Any], name: str) -> None:
    facts = facts_of(t, resource)
    assert facts.has(name)
    fact = facts.conditions[name][0]
    assert fact.reference == f"Condition/{resource['id']}"


def test_inclusion_body_myositis_is_not_myositis(t: Terminology) -> None:
    assert not facts_of(t, cond(text="Inclusion body myositis")).myositis


# --- ASyS: coded or antibody-defined -----------------------------------------------------------------


def test_asys_coded_by_text(t: Terminology) -> None:
    facts = facts_of(t, cond(text="Antisynthetase syndrome"))
    assert facts.asys and facts.has("asys")
    assert not facts.asys_antibody_defined


def test_asys_by_text_on_a_coded_condition(t: Terminology) -> None:
    """No code exists for ASyS: EHRs code it as M33.x and say 'antisynthetase syndrome' in the text."""
    facts = facts_of(t, cond("M33.11", system=ICD, text="Antisynthetase syndrome with ILD"))
    assert facts.has("asys") and facts.ild and facts.myositis


@pytest.mark.parametrize("code", [JO1, PL7, "33771-7", "45149-2", "45152-6"])  # Jo-1, PL-7, PL-12, EJ, OJ
def test_asys_antibody_defined_with_ild(t: Terminology, code: str) -> None:
    facts = facts_of(t, obs(code, valueString="Positive"), ild())
    assert facts.asys_antibody_defined and facts.asys


def test_asys_antibody_defined_with_myositis(t: Terminology) -> None:
    facts = facts_of(t, obs(JO1, valueString="Positive"), cond("M33.22", system=ICD))
    assert facts.asys


def test_synthetase_antibody_without_ild_or_myositis_is_not_asys(t: Terminology) -> None:
    facts = facts_of(t, obs(JO1, valueString="Positive"))
    assert not facts.asys
    assert facts.any_antibody_positive


@pytest.mark.parametrize("code", [RO52, MDA5])
def test_non_synthetase_antibody_does_not_define_asys(t: Terminology, code: str) -> None:
    assert not facts_of(t, obs(code, valueString="Positive"), ild()).asys


def test_negative_synthetase_antibody_does_not_define_asys(t: Terminology) -> None:
    assert not facts_of(t, obs(JO1, valueString="Negative"), ild()).asys


# --- RP-ILD: text or FVC trajectory ------------------------------------------------------------------


def test_rp_ild_by_text(t: Terminology) -> None:
    facts = facts_of(t, cond(ILD_SNOMED, text="Rapidly progressive interstitial lung disease"))
    assert facts.ild and facts.rp_ild


def test_rp_ild_by_text_on_a_text_only_condition(t: Terminology) -> None:
    facts = facts_of(t, cond(text="Rapidly progressive interstitial lung disease"))
    assert facts.ild and facts.rp_ild


def test_rp_ild_in_the_demo_fixture(t: Terminology) -> None:
    """pl7-ro52-rpild: ILD coded (SNOMED + ICD) with the text 'Rapidly progressive interstitial lung
    disease (antisynthetase syndrome)' — the fixture's whole point is RP-ILD."""
    facts = extract(record_resources(load_fixture("pl7-ro52-rpild")), t, TODAY, PARAMETERS, assertions=ASSERTIONS)
    assert facts.ild and facts.rp_ild


def test_rapidly_progressive_of_something_else_is_not_rp_ild(t: Terminology) -> None:
    facts = facts_of(t, ild(), cond(text="Rapidly progressive glomerulonephritis"))
    assert facts.ild and not facts.rp_ild


def test_rp_ild_by_fvc_fall_in_value_quantity(t: Terminology) -> None:
    series = [obs(FVC_PCT, when=80, valueQuantity=qty(76, "%")), obs(FVC_PCT, when=5, valueQuantity=qty(64, "%"))]
    facts = facts_of(t, ild(), *series)
    assert facts.fvc_decline is not None
    assert facts.fvc_decline.reference == f"Observation/{series[1]['id']}"
    assert facts.rp_ild


def test_rp_ild_by_fvc_fall_in_components(t: Terminology) -> None:
    def fvc(when: int, pct: float) -> dict[str, Any]:
        return obs(FVC_L, when=when, valueQuantity=qty(2.1, "L"), component=[
            {"code": {"coding": [{"system": LOINC, "code": FVC_L}]}, "valueQuantity": qty(2.1, "L")},
            {"code": {"coding": [{"system": LOINC, "code": FVC_PCT}]}, "valueQuantity": qty(pct, "%")},
        ])

    facts = facts_of(t, ild(), fvc(74, 76), fvc(0, 62))
    assert facts.fvc_decline is not None and facts.rp_ild


def test_fvc_fall_of_exactly_ten_points_counts(t: Terminology) -> None:
    series = [obs(FVC_PCT, when=60, valueQuantity=qty(70, "%")), obs(FVC_PCT, when=1, valueQuantity=qty(60, "%"))]
    assert facts_of(t, ild(), *series).rp_ild


def test_fvc_fall_under_ten_points_does_not_count(t: Terminology) -> None:
    series = [obs(FVC_PCT, when=60, valueQuantity=qty(70, "%")), obs(FVC_PCT, when=1, valueQuantity=qty(61, "%"))]
    facts = facts_of(t, ild(), *series)
    assert facts.fvc_decline is None and not facts.rp_ild


def test_fvc_fall_over_more_than_90_days_does_not_count(t: Terminology) -> None:
    series = [obs(FVC_PCT, when=120, valueQuantity=qty(80, "%")), obs(FVC_PCT, when=1, valueQuantity=qty(60, "%"))]
    assert not facts_of(t, ild(), *series).rp_ild


def test_fvc_rise_does_not_count(t: Terminology) -> None:
    series = [obs(FVC_PCT, when=60, valueQuantity=qty(60, "%")), obs(FVC_PCT, when=1, valueQuantity=qty(80, "%"))]
    assert not facts_of(t, ild(), *series).rp_ild


def test_fvc_fall_without_ild_is_not_rp_ild(t: Terminology) -> None:
    series = [obs(FVC_PCT, when=60, valueQuantity=qty(80, "%")), obs(FVC_PCT, when=1, valueQuantity=qty(60, "%"))]
    facts = facts_of(t, *series)
    assert facts.fvc_decline is not None and not facts.rp_ild


def test_preliminary_fvc_is_ignored(t: Terminology) -> None:
    series = [obs(FVC_PCT, when=60, valueQuantity=qty(80, "%")),
              obs(FVC_PCT, when=1, status="preliminary", valueQuantity=qty(60, "%"))]
    assert not facts_of(t, ild(), *series).rp_ild


# --- first-line immunosuppression ----------------------------------------------------------------------


def test_active_first_line_counts_whatever_its_age(t: Terminology) -> None:
    facts = facts_of(t, medreq(RITUXIMAB, text="Rituximab", authored=700))
    assert len(facts.therapies) == 1
    therapy = facts.therapies[0]
    assert therapy.status == "active" and not therapy.co_ordered
    assert facts.first_line_on_record and not facts.first_line_co_ordered


@pytest.mark.parametrize("status", ["completed", "on-hold"])
def test_completed_steroid_sparing_agent_within_180_days_counts(t: Terminology, status: str) -> None:
    assert facts_of(t, medreq(RITUXIMAB, status=status, authored=179)).therapies


def test_completed_steroid_sparing_agent_older_than_180_days_does_not_count(t: Terminology) -> None:
    assert not facts_of(t, medreq(RITUXIMAB, status="completed", authored=250)).therapies


def test_completed_glucocorticoid_counts_only_within_its_short_window(t: Terminology) -> None:
    window = PARAMETERS.glucocorticoid_current_window_days
    assert facts_of(t, medreq(PREDNISONE, status="completed", authored=window - 1)).therapies
    not_current = facts_of(t, medreq(PREDNISONE, status="completed", authored=window + 30))
    assert not not_current.therapies and not_current.not_counted[0].reason == "gc-not-current"


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error", "stopped", "draft"])
def test_other_request_statuses_do_not_count(t: Terminology, status: str) -> None:
    assert not facts_of(t, medreq(PREDNISONE, status=status, authored=5)).therapies


def test_first_line_by_text_only(t: Terminology) -> None:
    facts = facts_of(t, medreq(text="Mycophenolate mofetil 1000 mg tablet"))
    assert facts.therapies and facts.therapies[0].name.startswith("Mycophenolate")


def test_topical_glucocorticoid_is_not_first_line(t: Terminology) -> None:
    assert not facts_of(t, medreq(text="Hydrocortisone 1% cream, topical")).therapies


def test_medication_statement_counts(t: Terminology) -> None:
    facts = facts_of(t, medreq(PREDNISONE, text="Prednisone", rtype="MedicationStatement", authored=30))
    assert facts.therapies and facts.therapies[0].reference.startswith("MedicationStatement/")


def test_co_ordered_first_line_in_draft_orders(t: Terminology) -> None:
    draft = medreq(text="Mycophenolate mofetil", status="draft", authored=0)
    facts = facts_of(t, draft_orders=(draft,))
    assert facts.first_line_co_ordered and not facts.first_line_on_record
    assert facts.therapies[0].co_ordered


def test_the_ivig_order_itself_is_not_therapy(t: Terminology) -> None:
    ivig = medreq(text="Privigen (immune globulin intravenous)", status="draft", authored=0, mid="ivig-1")
    facts = extract([], t, TODAY, PARAMETERS, draft_orders=[ivig], exclude_references=["MedicationRequest/ivig-1"])
    assert not facts.therapies and not facts.notes


def test_non_first_line_medication_is_not_therapy(t: Terminology) -> None:
    assert not facts_of(t, medreq(text="Amoxicillin 500 mg")).therapies


# --- pulse IV methylprednisolone -----------------------------------------------------------------------


@pytest.mark.parametrize("route", [
    {"coding": [{"system": SNOMED, "code": "47625008"}]},
    {"text": "IV"},
    {"text": "Intravenous"},
])
def test_pulse_iv_methylprednisolone_is_flagged(t: Terminology, route: dict[str, Any]) -> None:
    facts = facts_of(t, medreq(METHYLPREDNISOLONE, text="Methylprednisolone 1 g", route=route))
    assert facts.therapies and facts.therapies[0].pulse_methylprednisolone


def test_solu_medrol_is_flagged_by_name(t: Terminology) -> None:
    facts = facts_of(t, medreq(text="Solu-Medrol 1 g IV"))
    assert facts.therapies
    # "IV" in the product text marks the intravenous form even without a route element.
    assert facts.therapies[0].pulse_methylprednisolone


def test_oral_methylprednisolone_is_therapy_but_not_pulse(t: Terminology) -> None:
    facts = facts_of(t, medreq(METHYLPREDNISOLONE, text="Methylprednisolone 4 mg tablet",
                               route={"text": "Oral"}))
    assert facts.therapies and not facts.therapies[0].pulse_methylprednisolone


def test_iv_prednisolone_is_not_pulse_methylprednisolone(t: Terminology) -> None:
    facts = facts_of(t, medreq(text="Prednisolone", route={"text": "IV"}))
    assert facts.therapies and not facts.therapies[0].pulse_methylprednisolone


# --- plasma exchange -------------------------------------------------------------------------------


def service_request(status: str, *, code: bool = True) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": "Therapeutic plasma exchange"}
    if code:
        concept["coding"] = [{"system": CPT, "code": "36514"}]
    return {"resourceType": "ServiceRequest", "id": _id("sr"), "status": status, "intent": "order",
            "code": concept, "subject": PATIENT, "authoredOn": days_ago(1)}


def procedure(status: str, performed_days_ago: int | None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Procedure", "id": _id("proc"), "status": status,
                                "code": {"coding": [{"system": CPT, "code": "36514"}], "text": "Plasmapheresis"},
                                "subject": PATIENT}
    if performed_days_ago is not None:
        resource["performedDateTime"] = days_ago(performed_days_ago)
    return resource


@pytest.mark.parametrize("status", ["active", "draft"])
def test_plasma_exchange_service_request_planned(t: Terminology, status: str) -> None:
    assert facts_of(t, service_request(status)).plasma_exchange
    assert facts_of(t, service_request(status, code=False)).plasma_exchange


@pytest.mark.parametrize("status", ["completed", "revoked", "entered-in-error"])
def test_plasma_exchange_service_request_not_planned(t: Terminology, status: str) -> None:
    assert not facts_of(t, service_request(status)).plasma_exchange


@pytest.mark.parametrize("status", ["in-progress", "preparation"])
def test_plasma_exchange_procedure_in_progress(t: Terminology, status: str) -> None:
    assert facts_of(t, procedure(status, None)).plasma_exchange


def test_plasma_exchange_procedure_within_7_days(t: Terminology) -> None:
    assert facts_of(t, procedure("completed", 3)).plasma_exchange
    assert facts_of(t, procedure("completed", 7)).plasma_exchange


def test_plasma_exchange_procedure_older_than_7_days(t: Terminology) -> None:
    assert not facts_of(t, procedure("completed", 30)).plasma_exchange


def test_plasma_exchange_co_ordered_in_draft_orders(t: Terminology) -> None:
    planned = service_request("draft")
    facts = facts_of(t, draft_orders=(planned,))
    assert [f.reference for f in facts.plasma_exchange] == [f"ServiceRequest/{planned['id']}"]


def test_other_service_request_is_not_plasma_exchange(t: Terminology) -> None:
    resource = service_request("active", code=False)
    resource["code"] = {"text": "Red cell exchange apheresis"}
    assert not facts_of(t, resource).plasma_exchange


# --- safety labs -----------------------------------------------------------------------------------


def test_newest_egfr_and_creatinine_with_flags(t: Terminology) -> None:
    facts = facts_of(
        t,
        obs(EGFR, when=100, valueQuantity=qty(90, "mL/min/1.73m2")),
        obs(EGFR, when=8, oid="egfr-new", valueQuantity=qty(45, "mL/min/1.73m2"), referenceRange=rng(low=60)),
        obs(CREATININE, when=8, oid="cr-new", valueQuantity=qty(1.9, "mg/dL"), referenceRange=rng(0.5, 1.1)),
        obs(CREATININE, when=200, valueQuantity=qty(0.8, "mg/dL"), referenceRange=rng(0.5, 1.1)),
    )
    egfr, creatinine = facts.labs["egfr"], facts.labs["creatinine"]
    assert egfr.value == 45 and egfr.reference == "Observation/egfr-new" and egfr.flag == "low"
    assert egfr.date == TODAY - timedelta(days=8)
    assert creatinine.value == 1.9 and creatinine.flag == "high" and creatinine.reference == "Observation/cr-new"


def test_creatinine_flag_from_interpretation(t: Terminology) -> None:
    facts = facts_of(t, obs(CREATININE, valueQuantity=qty(1.3, "mg/dL"), interpretation=interp("H")))
    assert facts.labs["creatinine"].flag == "high"


def test_normal_creatinine_has_no_flag(t: Terminology) -> None:
    facts = facts_of(t, obs(CREATININE, valueQuantity=qty(0.8, "mg/dL"), referenceRange=rng(0.5, 1.1)))
    assert facts.labs["creatinine"].flag is None


def test_iga_below_low_bound_is_flagged_low(t: Terminology) -> None:
    facts = facts_of(t, obs(IGA, valueQuantity=qty(4, "mg/dL"), referenceRange=rng(70, 400)))
    assert facts.labs["iga"].flag == "low"


def test_creatinine_clearance_is_not_creatinine(t: Terminology) -> None:
    facts = facts_of(t, obs("LOCAL-CRCL", system=LOCAL, text="Creatinine clearance",
                            valueQuantity=qty(40, "mL/min")))
    assert "creatinine" not in facts.labs


def test_anti_iga_antibody_is_not_serum_iga(t: Terminology) -> None:
    facts = facts_of(t, obs("LOCAL-AIGA", system=LOCAL, text="Anti-IgA antibody",
                            valueQuantity=qty(4, "U/mL")))
    assert "iga" not in facts.labs


@pytest.mark.parametrize("unit,value,kg", [("kg", 68.5, 68.5), ("[lb_av]", 150, 68.0), ("lb", 200, 90.7),
                                           ("g", 70000, 70.0)])
def test_weight_converted_to_kg(t: Terminology, unit: str, value: float, kg: float) -> None:
    facts = facts_of(t, obs(WEIGHT, valueQuantity={"value": value, "unit": unit}))
    weight = facts.labs["weight"]
    assert weight.unit == "kg" and weight.value == pytest.approx(kg, abs=0.05)


def test_weight_in_unknown_unit_is_a_note_not_a_value(t: Terminology) -> None:
    resource = obs(WEIGHT, valueQuantity={"value": 10, "unit": "stone"})
    facts = facts_of(t, resource)
    assert "weight" not in facts.labs
    assert [n.reference for n in facts.notes] == [f"Observation/{resource['id']}"]


def test_newest_weight_wins(t: Terminology) -> None:
    facts = facts_of(t, obs(WEIGHT, when=300, valueQuantity=qty(80, "kg")),
                     obs(WEIGHT, when=3, valueQuantity=qty(70, "kg")))
    assert facts.labs["weight"].value == 70


# --- bad resources: skipped, listed, never raising ---------------------------------------------------


def test_bad_resources_are_skipped_and_listed(t: Terminology) -> None:
    bad_value = obs(RO52, oid="bad-value", valueQuantity={"value": "abc", "unit": "U"},
                    referenceRange=rng(high=10))
    bad_code = {"resourceType": "Condition", "id": "bad-code", "code": "interstitial lung disease",
                "subject": PATIENT}
    bad_status = obs(PL7, oid="bad-status", valueString="Positive")
    bad_status["status"] = ["final"]
    bad_qty = obs(CREATININE, oid="bad-qty", valueQuantity="1.2 mg/dL")
    bad_string = obs(JO1, oid="bad-string", valueString=42)
    good = [obs(JO1, valueString="Positive"), ild(), medreq(text="Cyclophosphamide")]
    resources = [bad_value, "not a resource", 17, None, {"id": "no-type"}, bad_code, bad_status, bad_qty,
                 bad_string, *good]
    facts = extract(resources, t, TODAY, PARAMETERS)
    noted = {n.reference for n in facts.notes}
    assert {"Observation/bad-value", "Condition/bad-code", "Observation/bad-status", "Observation/bad-qty",
            "Observation/bad-string"} <= noted
    assert all(n.kind == "skipped-resource" for n in facts.notes)
    assert len(facts.notes) >= 9  # the non-resources are listed too
    # The good resources next to them are read as usual.
    assert facts.antibodies["jo1"].status == "positive"
    assert "ro52" not in facts.antibodies
    assert facts.ild and facts.asys and facts.therapies


@pytest.mark.parametrize("mutate", [
    lambda r: r.update(code={"coding": "33772-5"}),
    lambda r: r.update(code={"coding": [{"system": LOINC, "code": 33772}]}),
    lambda r: r.update(referenceRange={"high": {"value": "x"}}),
    lambda r: r.update(interpretation="POS"),
    lambda r: r.update(effectiveDateTime="not a date"),
    lambda r: r.update(component="nonsense"),
    lambda r: r.update(valueCodeableConcept=[1, 2]),
    lambda r: r.update(valueQuantity={"value": None}),
    lambda r: r.update(subject=None, code=None),
])
def test_odd_shapes_never_raise(t: Terminology, mutate: Any) -> None:
    resource = obs(PL7, valueString="Positive")
    mutate(resource)
    extract([resource], t, TODAY, PARAMETERS)  # no exception is the assertion


def test_odd_condition_and_medication_shapes_never_raise(t: Terminology) -> None:
    odd = [
        {"resourceType": "Condition", "id": "c1", "code": {"coding": [None, 1, {"code": None}]},
         "clinicalStatus": 5, "verificationStatus": [None]},
        {"resourceType": "Condition", "id": "c2", "code": {"text": ["ild"]}, "onsetPeriod": "x"},
        {"resourceType": "MedicationRequest", "id": "m1", "status": None},
        {"resourceType": "MedicationRequest", "id": "m2", "status": "active",
         "medicationReference": {"reference": 5}},
        {"resourceType": "MedicationRequest", "id": "m3", "status": "active",
         "medicationCodeableConcept": "prednisone", "dosageInstruction": "IV"},
        {"resourceType": "MedicationStatement", "id": "m4", "status": "completed",
         "medicationCodeableConcept": {"text": "prednisone"}, "effectivePeriod": "last week"},
        {"resourceType": "Procedure", "id": "p1", "status": "completed", "code": {"text": "plasmapheresis"},
         "performedPeriod": "yesterday"},
        {"resourceType": "ServiceRequest", "id": "s1", "status": 1, "code": {"text": "plasma exchange"}},
    ]
    facts = extract(odd, t, TODAY, PARAMETERS, draft_orders=[{"resourceType": "MedicationRequest", "id": "d1"}, "x"])
    assert isinstance(facts, PatientFacts)


def test_resources_of_other_types_are_ignored_quietly(t: Terminology) -> None:
    facts = facts_of(t, {"resourceType": "Patient", "id": "p1", "birthDate": "1970-05-01"},
                     {"resourceType": "Encounter", "id": "e1"},
                     {"resourceType": "OperationOutcome", "issue": []})
    assert not facts.notes and not facts.antibodies and not facts.conditions
