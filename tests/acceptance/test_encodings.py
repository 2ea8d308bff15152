"""The same facts in other encodings (issue 3 item 3): value types, local codes, panels, statuses,
FVC trajectories and first-line therapy readings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from acceptance.patients import asys_ild_record, pl7_quantity_ro52_lineblot
from acceptance.support import (
    CLINICAL,
    HOOKS,
    ICD10CM,
    ILD_CTD_SNOMED,
    ILD_J8410,
    ILD_SNOMED,
    LOCAL_LAB,
    LOINC,
    MYCOPHENOLATE,
    NEGATIVE_LOINC,
    POSITIVE_LOINC,
    POSITIVE_SNOMED,
    PREDNISONE,
    PRIVIGEN_NDC11,
    RXNORM,
    SNOMED,
    Record,
    call,
    card,
    coding,
    concept,
    draft,
    hook_request,
    ids,
    interp,
    same_cards,
    table,
)

ENCODINGS: dict[str, tuple[dict[str, Any], dict[str, Any] | None, bool]] = {
    # name: (antibody Observation fields, ILD Condition fields or None for the default, synthetase positive?)
    "jo1-valuestring-plus-plus-plus": ({"code": concept(coding(LOINC, "33571-1")), "valueString": "+++"}, None, True),
    "jo1-valuestring-neg": ({"code": concept(coding(LOINC, "33571-1")), "valueString": "Neg"}, None, False),
    # issue 12: a weak-positive synthetase antibody alone does not define ASyS
    "pl7-weak-positive": ({"code": concept(coding(LOINC, "33772-5")), "valueString": "Weak positive"}, None, False),
    "pl7-borderline": ({"code": concept(coding(LOINC, "33772-5")), "valueString": "Borderline"}, None, False),
    "ej-interpretation-ind": ({"code": concept(coding(LOINC, "45149-2")), "interpretation": interp("IND")},
                              None, False),
    "oj-interpretation-neg": ({"code": concept(coding(LOINC, "45152-6")), "interpretation": interp("NEG")},
                              None, False),
    "pl12-quantity-range-text": ({"code": concept(coding(LOINC, "105552-4")),
                                  "valueQuantity": {"value": 46, "unit": "U"},
                                  "referenceRange": [{"text": "<20"}]}, None, True),
    "pl12-quantity-below-high": ({"code": concept(coding(LOINC, "105552-4")),
                                  "valueQuantity": {"value": 12, "unit": "U"},
                                  "referenceRange": [{"high": {"value": 20, "unit": "U"}}]}, None, False),
    "ej-valueboolean-free-text-local": ({"code": concept(coding(LOCAL_LAB, "EJAB"), text="Anti-EJ antibody"),
                                        "valueString": "Detected"}, None, True),
    "pl7-loinc-oid-system": ({"code": concept(coding("urn:oid:2.16.840.1.113883.6.1", "33772-5")),
                              "valueCodeableConcept": POSITIVE_SNOMED}, None, True),
    "jo1-positive-ild-dstu2-clinical-status-string": (
        {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": POSITIVE_LOINC},
        {"code": ILD_SNOMED, "clinicalStatus": "active", "verificationStatus": "confirmed"}, True),
    "jo1-positive-ild-clinical-status-absent": (
        {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": POSITIVE_LOINC},
        {"code": concept(coding(ICD10CM, "J84.89"))}, True),
    "jo1-positive-ild-recurrence": (
        {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": POSITIVE_LOINC},
        {"code": ILD_CTD_SNOMED, "clinicalStatus": concept(coding(CLINICAL, "recurrence"))}, True),
    "jo1-positive-ild-text-only": (
        {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": POSITIVE_LOINC},
        {"code": concept(text="Nonspecific interstitial pneumonia (NSIP) on HRCT")}, True),
    "jo1-positive-ild-snomed-ipaf": (
        {"code": concept(coding(LOINC, "5234-0")), "valueCodeableConcept": POSITIVE_SNOMED},
        {"code": concept(coding(SNOMED, "870573008"))}, True),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_other_encodings_of_the_same_facts(client: FlaskClient, templates: dict[str, dict[str, str]],
                                           name: str) -> None:
    antibody, ild, positive = ENCODINGS[name]
    record = asys_ild_record(f"acc-enc-{sorted(ENCODINGS).index(name)}", antibody, ild)
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    expected = table(ild=True, synthetase_positive=positive)
    for hook in HOOKS:
        same_cards(ids(call(client, hook_request(hook, record, [ivig], templates=templates[hook]))), expected)


def test_newest_final_result_wins(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    """An older negative superseded by a newer amended positive; a newer preliminary negative is ignored."""
    record = asys_ild_record("acc-newest")
    code = concept(coding(LOINC, "33772-5", "PL-7 Ab [Presence] in Serum"))
    record.obs("acc-newest-1", code, days=400, valueString="Negative")
    record.obs("acc-newest-2", code, days=90, status="amended", valueString="Positive")
    record.obs("acc-newest-3", code, days=5, status="preliminary", valueString="Negative")
    record.obs("acc-newest-4", code, days=2, status="cancelled", valueString="Negative")
    ivig = draft(record.pid, "acc-newest-ivig", PRIVIGEN_NDC11)
    same_cards(ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))),
               table(ild=True, pl7=True))
    record.obs("acc-newest-5", code, days=1, status="corrected", valueCodeableConcept=NEGATIVE_LOINC)
    same_cards(ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))),
               table(ild=True))


def test_antibodies_as_components_of_a_panel(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record = Record("acc-panel", "Petra", "Panel")
    record.obs("acc-panel-obs", concept(coding(LOCAL_LAB, "MYOPNL"), text="Myositis antibody panel (line blot)"),
               component=[
                   {"code": concept(coding(LOINC, "33772-5", "PL-7 Ab [Presence] in Serum")),
                    "valueCodeableConcept": POSITIVE_SNOMED},
                   {"code": concept(coding(LOINC, "53016-2")), "valueString": "Positive"},
                   {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": NEGATIVE_LOINC},
                   {"code": concept(coding(LOINC, "82424-3")), "valueString": "Negative"}])
    record.cond("acc-panel-ild", ILD_J8410)
    record.renal_ok()
    ivig = draft(record.pid, "acc-panel-ivig", PRIVIGEN_NDC11)
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, pl7=True, ro52=True))


def test_local_codes_matched_by_alias_text(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record = Record("acc-alias", "Aliya", "Lokal")
    record.obs("acc-alias-pl7", concept(coding(LOCAL_LAB, "X-77"), text="Anti-threonyl-tRNA synthetase Ab"),
               valueString="POSITIVE")
    record.obs("acc-alias-ro", concept(coding(LOCAL_LAB, "X-52"), text="TRIM21 antibody (SSA-52)"),
               valueString="Strongly positive")
    record.obs("acc-alias-mda", concept(coding(LOCAL_LAB, "X-140"), text="CADM-140 antibody, ELISA"),
               valueQuantity={"value": 92, "unit": "units"}, referenceRange=[{"high": {"value": 20}}])
    record.cond("acc-alias-ild", concept(coding("https://ehr.acceptance.example.net/problems", "P-9"),
                                         text="Rapidly progressive interstitial lung disease"))
    record.renal_ok()
    ivig = draft(record.pid, "acc-alias-ivig", concept(text="IVIG 0.4 g/kg/day x 5 days"))
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, pl7=True, ro52=True, mda5=True, rp_ild=True))


# Once a defect found by these tests (fixed); kept as a regression test.
@pytest.mark.parametrize("system, code", [(SNOMED, "260373001"), (LOINC, "LA11882-0")])
def test_detected_answer_codes_are_positive(client: FlaskClient, templates: dict[str, dict[str, str]], system: str,
                                            code: str) -> None:
    record = asys_ild_record(f"acc-det-{code}", {"code": concept(coding(LOINC, "33772-5")),
                                                  "valueCodeableConcept": concept(coding(system, code))})
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    got = ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"])))
    same_cards(got, table(ild=True, pl7=True))


@pytest.mark.parametrize("first, last, days, decline", [(80, 70, 89, True), (80, 71, 30, False),
                                                        (80, 65, 95, False), (80, 70, 90, True),
                                                        (80, 60, 91, False)])
def test_fvc_decline_threshold_and_window(client: FlaskClient, templates: dict[str, dict[str, str]], first: int,
                                          last: int, days: int, decline: bool) -> None:
    record = Record(f"acc-fvc-{first}-{last}-{days}")
    record.obs(f"{record.pid}-pl12", concept(coding(LOINC, "33771-7")), valueString="Positive")
    record.cond(f"{record.pid}-ild", ILD_SNOMED)
    fvc_pct = concept(coding(LOINC, "19872-1", "FVC measured/predicted"))
    record.obs(f"{record.pid}-a", fvc_pct, days=days + 1, lab=False, valueQuantity={"value": first, "unit": "%"})
    record.obs(f"{record.pid}-b", fvc_pct, days=1, lab=False, valueQuantity={"value": last, "unit": "%"})
    record.renal_ok()
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, synthetase_positive=True))
    assert (f"Observation/{record.pid}-b" in card(cards, "ivig-not-first-line")["detail"]) is decline


# Once a defect found by these tests (fixed); kept as a regression test.
def test_fvc_percent_unit_from_the_ucum_code(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record = Record("acc-fvc-ucum")
    record.obs("acc-fvc-ucum-pl12", concept(coding(LOINC, "33771-7")), valueString="Positive")
    record.cond("acc-fvc-ucum-ild", ILD_SNOMED)
    for oid, days, value in (("acc-fvc-ucum-a", 50, 82), ("acc-fvc-ucum-b", 2, 67)):
        record.obs(oid, concept(coding(LOINC, "19872-1")), days=days, lab=False,
                   valueQuantity={"value": value, "unit": "percent predicted", "system": "http://unitsofmeasure.org",
                                  "code": "%"})
    record.renal_ok()
    ivig = draft(record.pid, "acc-fvc-ucum-ivig", PRIVIGEN_NDC11)
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, synthetase_positive=True))
    assert "Observation/acc-fvc-ucum-b" in card(cards, "ivig-not-first-line")["detail"]


def test_first_line_on_record_windows_and_statuses(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    """180-day window: completed 170 days ago counts, 300 days ago does not; stopped or entered-in-error do not."""
    cases = [
        ({"status": "completed", "days": 170}, True),
        ({"status": "completed", "days": 300}, False),
        ({"status": "on-hold", "days": 30}, True),
        ({"status": "entered-in-error", "days": 10}, False),
        ({"status": "stopped", "days": 10}, False),
    ]
    for kwargs, counts in cases:
        record, drafts, _ = pl7_quantity_ro52_lineblot()
        record.med_request("acc-pl7-q-mmf", MYCOPHENOLATE, **kwargs)
        got = ids(call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"])))
        same_cards(got, table(ild=True, pl7=True, ro52=True, first_line=counts))


@pytest.mark.parametrize("name, add, counts", [
    ("rituximab-contained", lambda r: r.med_request(
        "acc-f-m", None, status="active", medicationCodeableConcept=None,
        medicationReference={"reference": "#rtx"},
        contained=[{"resourceType": "Medication", "id": "rtx", "code": concept(coding(RXNORM, "121191"))}]), True),
    ("statement-not-taken", lambda r: r.med_statement("acc-f-m", concept(text="CellCept 500 mg"),
                                                      status="not-taken", days=20), False),
    ("statement-entered-in-error", lambda r: r.med_statement("acc-f-m", PREDNISONE, status="entered-in-error"),
     False),
    ("topical-tacrolimus", lambda r: r.med_request("acc-f-m", concept(text="Tacrolimus 0.1% ointment"),
                                                   status="active"), False),
    ("azathioprine-brand", lambda r: r.med_request("acc-f-m", concept(text="Imuran 50 mg tablet"),
                                                   status="active"), True),
])
def test_more_first_line_readings(client: FlaskClient, templates: dict[str, dict[str, str]], name: str,
                                  add: Callable[[Record], Any], counts: bool) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    resource = add(record)
    if resource.get("medicationCodeableConcept") is None:
        resource.pop("medicationCodeableConcept", None)
    got = ids(call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"])))
    same_cards(got, table(ild=True, pl7=True, ro52=True, first_line=counts))


@pytest.mark.parametrize("days, counts", [(180, True), (181, False)])
def test_first_line_window(client: FlaskClient, templates: dict[str, dict[str, str]], days: int,
                           counts: bool) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    record.med_request("acc-pl7-q-aza", concept(coding(RXNORM, "1256")), status="completed", days=days)
    got = ids(call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"])))
    same_cards(got, table(ild=True, pl7=True, ro52=True, first_line=counts))
