"""Issue 12, one rule at a time, in the pure core: plain dicts through ``facts.extract`` and
``rules.decide`` (the HTTP view of the same rules is tests/test_issue12_patients.py)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_service.clinical.contract import CardId, Finding
from cds_service.clinical.facts import extract
from cds_service.clinical.orders import ivig_orders
from cds_service.clinical.patient import PatientFacts
from cds_service.clinical.rules import decide
from cds_service.engine.assertion import assertion_reader
from cds_service.engine.content.parameters import load_parameters
from cds_service.terminology import Terminology

CARDS = Path(__file__).resolve().parent.parent / "cards"
T = Terminology.load(CARDS / "valuesets")
P = load_parameters(CARDS)
A = assertion_reader(CARDS / "assertion-cues.yaml")
TODAY = date(2026, 11, 22)
SNOMED, ICD, RX, LOINC = ("http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm",
                          "http://www.nlm.nih.gov/research/umls/rxnorm", "http://loinc.org")
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
SUBJECT = {"reference": "Patient/p1"}
_n = 0


def ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def _id(stem: str) -> str:
    global _n
    _n += 1
    return f"{stem}-{_n}"


def patient(birth: str | None = "1970-01-01") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **({"birthDate": birth} if birth else {})}


def condition(text: str | None = None, codings: list[tuple[str, str]] | None = None, *, verification: str | None = None,
              days: int = 100) -> dict[str, Any]:
    code: dict[str, Any] = {}
    if codings:
        code["coding"] = [{"system": s, "code": c} for s, c in codings]
    if text:
        code["text"] = text
    r: dict[str, Any] = {"resourceType": "Condition", "id": _id("c"), "subject": SUBJECT, "code": code,
                         "onsetDateTime": ago(days)}
    if verification:
        r["verificationStatus"] = {"coding": [{"system": VER, "code": verification}]}
    return r


ILD = [(SNOMED, "233703007")]


def antibody(loinc: str, value: str, days: int = 30) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": _id("o"), "status": "final", "subject": SUBJECT,
            "code": {"coding": [{"system": LOINC, "code": loinc}]}, "effectiveDateTime": ago(days),
            "valueString": value}


# Codes from the shipped value sets (cards/valuesets/antibody-*.json).
JO1, PL7, RO52, MDA5 = "8076-2", "33772-5", "53016-2", "82424-3"


def med(codings: list[tuple[str, str]] | None = None, text: str | None = None, *, status: str = "active",
        days: int = 10, rtype: str = "MedicationRequest", **extra: Any) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = [{"system": s, "code": c} for s, c in codings]
    if text:
        concept["text"] = text
    r: dict[str, Any] = {"resourceType": rtype, "id": _id("m"), "status": status, "subject": SUBJECT,
                         "medicationCodeableConcept": concept}
    if rtype == "MedicationRequest":
        r.update(intent="order", authoredOn=ago(days))
    else:
        r["effectiveDateTime"] = ago(days)
    r.update(extra)
    return r


def ivig(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": "ivig-1", "status": "draft", "intent": "order",
            "subject": SUBJECT, "medicationCodeableConcept": {"text": "Privigen 10% IV infusion"}, **extra}


def evaluate(*resources: dict[str, Any], drafts: tuple[dict[str, Any], ...] = (), order: dict[str, Any] | None = None,
             ) -> tuple[PatientFacts, dict[str, set[str]]]:
    order = order or ivig()
    all_drafts = [order, *drafts]
    orders = ivig_orders("order-sign", all_drafts, [], T)
    facts = extract(list(resources), T, TODAY, P, draft_orders=all_drafts,
                    exclude_references=[o.reference for o in orders], assertions=A,
                    orders=[o.resource for o in orders])
    evaluation = decide(facts, orders, T, P)
    return facts, {str(d.card_id): {str(f) for f in d.findings} for d in evaluation.decisions}


def asys_ild(*more: dict[str, Any]) -> list[dict[str, Any]]:
    return [patient(), antibody(JO1, "Positive"), condition("Interstitial lung disease", ILD), *more]


# -- 1. assertion ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["No evidence of interstitial lung disease", "ILD ruled out on HRCT",
                                  "Interstitial lung disease excluded", "negative for ILD",
                                  "Family history of interstitial lung disease"])
def test_negated_or_family_text_is_not_the_diagnosis(text: str) -> None:
    facts, cards = evaluate(patient(), antibody(JO1, "Positive"), condition(text))
    assert not facts.ild and CardId.IVIG_NOT_FIRST_LINE not in cards


@pytest.mark.parametrize("text", ["Possible ILD", "? interstitial lung disease", "Suspected interstitial lung disease",
                                  "ILD vs hypersensitivity pneumonitis"])
def test_uncertain_text_is_possible_only(text: str) -> None:
    facts, cards = evaluate(patient(), antibody(JO1, "Positive"), condition(text))
    assert not facts.ild and facts.possible_conditions
    assert CardId.IVIG_NOT_FIRST_LINE not in cards


@pytest.mark.parametrize("verification, counts", [("confirmed", True), (None, True), ("provisional", False),
                                                  ("differential", False), ("unconfirmed", False),
                                                  ("refuted", False), ("entered-in-error", False)])
def test_verification_status(verification: str | None, counts: bool) -> None:
    facts, cards = evaluate(patient(), antibody(JO1, "Positive"),
                            condition("Interstitial lung disease", ILD, verification=verification))
    assert facts.ild is counts
    assert (CardId.IVIG_NOT_FIRST_LINE in cards) is counts


def test_possible_diagnosis_is_shown_beside_a_card_that_fires_anyway() -> None:
    _, cards = evaluate(*asys_ild(condition("Possible rapidly progressive interstitial lung disease")))
    assert Finding.POSSIBLE_DIAGNOSIS in cards[CardId.IVIG_NOT_FIRST_LINE]
    assert Finding.RP_ILD not in cards[CardId.IVIG_NOT_FIRST_LINE]


# -- 2. indication ---------------------------------------------------------------------------------------

def test_ivig_for_another_indication_gets_only_safety() -> None:
    order = ivig(reasonCode=[{"coding": [{"system": ICD, "code": "D69.3"}], "text": "Immune thrombocytopenia"}])
    facts, cards = evaluate(*asys_ild(), order=order)
    assert facts.indication == "other" and set(cards) <= {CardId.IVIG_SAFETY}


def test_ivig_for_the_ild_by_reason_reference() -> None:
    ild = condition("Interstitial lung disease", ILD)
    order = ivig(reasonReference=[{"reference": f"Condition/{ild['id']}"}])
    facts, cards = evaluate(patient(), antibody(JO1, "Positive"), ild, order=order)
    assert facts.indication == "in-scope" and CardId.IVIG_NOT_FIRST_LINE in cards


def test_unresolvable_reason_reference_keeps_the_cards() -> None:
    facts, cards = evaluate(*asys_ild(), order=ivig(reasonReference=[{"reference": "Condition/elsewhere"}]))
    assert facts.indication != "other" and CardId.IVIG_NOT_FIRST_LINE in cards


# -- 3. first-line therapy ---------------------------------------------------------------------------------

MP, PRED, MMF, RTX = [(RX, "6902")], [(RX, "8640")], [(RX, "68149")], [(RX, "121191")]


def test_premedication_glucocorticoid_is_not_first_line() -> None:
    premed = med(MP, "Methylprednisolone 40 mg IV", status="draft",
                 dosageInstruction=[{"text": "premedication before IVIG", "route": {"text": "IV"}}])
    facts, cards = evaluate(*asys_ild(), drafts=(premed,))
    assert not facts.therapies and CardId.IVIG_NOT_FIRST_LINE in cards
    assert facts.not_counted[0].reason == "gc-premedication"


def test_unlabelled_co_ordered_hydrocortisone_is_premedication() -> None:
    hydro = med(text="Hydrocortisone 100 mg IV", status="draft")
    facts, _ = evaluate(*asys_ild(), drafts=(hydro,))
    assert not facts.therapies and facts.not_counted[0].reason == "gc-co-ordered-no-pulse"


def test_co_ordered_pulse_counts() -> None:
    pulse = med(MP, "Methylprednisolone 1 g IV", status="draft", dosageInstruction=[{"route": {"text": "IV"}}])
    facts, cards = evaluate(*asys_ild(), drafts=(pulse,))
    assert facts.therapies and facts.therapies[0].pulse_methylprednisolone
    assert CardId.IVIG_ADJUNCT_IN_CONTEXT in cards


def test_glucocorticoid_for_another_condition_is_not_first_line() -> None:
    asthma = med(PRED, "Prednisone 20 mg", reasonCode=[{"text": "Asthma exacerbation",
                                                         "coding": [{"system": ICD, "code": "J45.901"}]}])
    facts, _ = evaluate(*asys_ild(asthma))
    assert not facts.therapies and facts.not_counted[0].reason == "gc-other-indication"


def test_glucocorticoid_that_ended_long_ago_is_history() -> None:
    old = med(PRED, "Prednisone 10 mg", status="completed", days=120)
    facts, _ = evaluate(*asys_ild(old))
    assert not facts.therapies


def test_glucocorticoid_only_is_said() -> None:
    current = med(PRED, "Prednisone 40 mg daily", reasonCode=[{"text": "Antisynthetase syndrome"}])
    _, cards = evaluate(*asys_ild(current))
    assert Finding.GLUCOCORTICOID_ONLY in cards[CardId.IVIG_ADJUNCT_IN_CONTEXT]


def test_steroid_sparing_agent_keeps_its_window() -> None:
    facts, cards = evaluate(*asys_ild(med(RTX, "Rituximab", status="completed", days=150)))
    assert facts.therapies and Finding.GLUCOCORTICOID_ONLY not in cards[CardId.IVIG_ADJUNCT_IN_CONTEXT]


# -- 4/5. antibody strength, phenotype, MDA5 ------------------------------------------------------------

def test_weak_positive_does_not_define_asys() -> None:
    facts, cards = evaluate(patient(), antibody(PL7, "Weak positive"), condition("Interstitial lung disease", ILD))
    assert facts.antibodies["pl7"].status == "weak-positive" and not facts.asys
    assert set(cards) <= {CardId.IVIG_SAFETY}


@pytest.mark.parametrize("ild_text, fires", [("Interstitial lung disease", False),
                                             ("Rapidly progressive interstitial lung disease", True)])
def test_phenotype_needs_rapidly_progressive_ild(ild_text: str, fires: bool) -> None:
    _, cards = evaluate(patient(), antibody(PL7, "Positive"), antibody(RO52, "Positive"), condition(ild_text, ILD))
    assert (CardId.ASYS_HIGH_RISK_PHENOTYPE in cards) is fires


def test_phenotype_not_on_a_weak_ro52() -> None:
    _, cards = evaluate(patient(), antibody(PL7, "Positive"), antibody(RO52, "weak positive"),
                        condition("Rapidly progressive interstitial lung disease", ILD))
    assert CardId.ASYS_HIGH_RISK_PHENOTYPE not in cards


def test_mda5_without_immunosuppression_is_flagged_for_the_warning() -> None:
    _, cards = evaluate(patient(), antibody(MDA5, "Positive"), condition("Interstitial lung disease", ILD))
    assert Finding.NO_FIRST_LINE in cards[CardId.MDA5_ILD_IVIG_ADJUNCT]
    _, treated = evaluate(patient(), antibody(MDA5, "Positive"), condition("Interstitial lung disease", ILD),
                          med(MMF, "Mycophenolate"))
    assert Finding.NO_FIRST_LINE not in treated[CardId.MDA5_ILD_IVIG_ADJUNCT]


# -- 6. population ---------------------------------------------------------------------------------------

def test_child_gets_only_safety_and_no_dose() -> None:
    weight = {"resourceType": "Observation", "id": "w1", "status": "final", "subject": SUBJECT,
              "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}, "effectiveDateTime": ago(2),
              "valueQuantity": {"value": 40, "unit": "kg", "code": "kg"}}
    facts, cards = evaluate(patient("2015-06-01"), antibody(JO1, "Positive"),
                            condition("Interstitial lung disease", ILD), weight)
    assert facts.age_years == 11 and not facts.adult
    assert set(cards) <= {CardId.IVIG_SAFETY}


def test_unknown_birth_date_applies_the_adult_rules_with_a_note() -> None:
    facts, cards = evaluate(patient(None), antibody(JO1, "Positive"), condition("Interstitial lung disease", ILD))
    assert facts.adult and CardId.IVIG_NOT_FIRST_LINE in cards
    assert any(n.key == "patientBirthDate" for n in facts.notes)


def test_active_recent_pregnancy_is_a_finding() -> None:
    _, cards = evaluate(*asys_ild(condition("Pregnant", [(SNOMED, "77386006")], days=30)))
    assert Finding.PREGNANCY in cards[CardId.IVIG_NOT_FIRST_LINE]


def test_old_pregnancy_entry_is_not() -> None:
    _, cards = evaluate(*asys_ild(condition("Pregnancy", [(ICD, "Z33.1")], days=500)))
    assert Finding.PREGNANCY not in cards[CardId.IVIG_NOT_FIRST_LINE]


def test_pregnancy_status_observation() -> None:
    status = {"resourceType": "Observation", "id": "ps1", "status": "final", "subject": SUBJECT,
              "code": {"coding": [{"system": LOINC, "code": "82810-3"}]}, "effectiveDateTime": ago(20),
              "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "77386006"}], "text": "Pregnant"}}
    facts, _ = evaluate(*asys_ild(status))
    assert facts.pregnancy is not None


# -- 7. prior IVIG ---------------------------------------------------------------------------------------

def test_prior_ivig_courses_are_counted_over_twelve_months() -> None:
    courses = [med(text="Privigen 10% IV", status="completed", days=d) for d in (30, 90, 400)]
    administration = med(text="Gamunex-C IV", status="completed", days=60, rtype="MedicationAdministration")
    facts, cards = evaluate(*asys_ild(med(MMF, "Mycophenolate"), *courses, administration))
    assert len(facts.ivig_courses) == 3
    assert Finding.REPEATED_IVIG in cards[CardId.IVIG_ADJUNCT_IN_CONTEXT]


# -- 9/10. dosing weight, suggestions in context ------------------------------------------------------------

def test_pfts_in_the_last_90_days_mean_no_pft_order() -> None:
    fvc = {"resourceType": "Observation", "id": "f1", "status": "final", "subject": SUBJECT,
           "code": {"coding": [{"system": LOINC, "code": "19872-1"}]}, "effectiveDateTime": ago(7),
           "valueQuantity": {"value": 70, "unit": "%", "code": "%"}}
    _, cards = evaluate(*asys_ild(fvc))
    assert Finding.PFT_RECENT in cards[CardId.ILD_MONITORING]
    _, without = evaluate(*asys_ild())
    assert Finding.PFT_RECENT not in without[CardId.ILD_MONITORING]


def test_ipf_without_myositis_gets_no_antibody_panel() -> None:
    _, cards = evaluate(patient(), condition("Idiopathic pulmonary fibrosis", [(ICD, "J84.112")]),
                        condition("Pulmonary fibrosis", ILD))
    assert CardId.MYOSITIS_ANTIBODIES_MISSING not in cards
    _, plain = evaluate(patient(), condition("Interstitial lung disease", ILD))
    assert CardId.MYOSITIS_ANTIBODIES_MISSING in plain
