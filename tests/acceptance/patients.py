"""Synthetic patients used by several acceptance files: each returns (record, draft orders,
expected cards from the rules table), or a record in the clinical scope to add a finding to.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

from acceptance.support import (
    AMLODIPINE,
    CLINICAL,
    CYCLOPHOSPHAMIDE,
    DM_SNOMED,
    GAMUNEX_TEXT,
    ICD10CM,
    ILD_CTD_SNOMED,
    ILD_J8410,
    ILD_J84170,
    ILD_SNOMED,
    LAB_CATEGORY,
    LOINC,
    NDC,
    PM_RESP_M3321,
    POSITIVE_LOINC,
    POSITIVE_SNOMED,
    PREDNISONE,
    PRIVIGEN_NDC11,
    SNOMED,
    TACROLIMUS,
    Record,
    ago_dt,
    coding,
    concept,
    draft,
    interp,
    table,
)


def pl7_quantity_ro52_lineblot() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """PL-7 by quantity (4x the high bound), Ro52 by line blot answer LA6576-8, ILD as J84.10, no therapy."""
    r = Record("acc-pl7-q", "Oriana", "Quintero-Blot")
    r.obs("acc-pl7-q-ab", concept(coding(LOINC, "105551-6", "PL-7 Ab [Units/volume] in Serum")), days=21,
          valueQuantity={"value": 84, "unit": "U/mL"},
          referenceRange=[{"high": {"value": 20, "unit": "U/mL"}}])
    r.obs("acc-pl7-q-ro52", concept(coding(LOINC, "82933-3", "Sjogrens syndrome-A extractable nuclear 52kD IgG Ab "
                                                         "[Presence] in Serum by Line blot")),
          days=21, valueCodeableConcept=POSITIVE_LOINC)
    r.cond("acc-pl7-q-ild", ILD_J8410, days=60)
    r.med_request("acc-pl7-q-amlo", AMLODIPINE, days=30)  # not a first-line agent
    r.renal_ok()
    ivig = draft(r.pid, "acc-pl7-q-ivig", PRIVIGEN_NDC11)
    return r, [ivig], table(ild=True, pl7=True, ro52=True)


def pl12_string_fvc_components_rituxan() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """PL-12 'Positive' (valueString), ILD due to CTD (SNOMED 711379004), FVC % predicted components falling
    81 -> 69 in 60 days (RP-ILD by trajectory), 'Rituxan' MedicationStatement 100 days ago."""
    r = Record("acc-pl12-fvc", "Benedikt", "Spirometrie")
    r.obs("acc-pl12-fvc-ab", concept(coding(LOINC, "33771-7", "PL-12 Ab [Presence] in Serum")), days=70,
          valueString="Positive")
    r.cond("acc-pl12-fvc-ild", ILD_CTD_SNOMED, days=120)
    fvc = concept(coding(LOINC, "19868-9", "FVC [Volume] Respiratory system by Spirometry"))
    for oid, days, litres, pct in (("acc-pl12-fvc-1", 62, 2.61, 81), ("acc-pl12-fvc-2", 2, 2.22, 69)):
        r.obs(oid, fvc, days=days, lab=False, valueQuantity={"value": litres, "unit": "L"},
              component=[{"code": concept(coding(LOINC, "19872-1", "FVC measured/predicted")),
                          "valueQuantity": {"value": pct, "unit": "%", "system": "http://unitsofmeasure.org",
                                            "code": "%"}}])
    r.med_statement("acc-pl12-fvc-rtx", concept(text="Rituxan"), status="completed", days=100)
    r.renal_ok()
    ivig = draft(r.pid, "acc-pl12-fvc-ivig", GAMUNEX_TEXT)
    return r, [ivig], table(ild=True, synthetase_positive=True, first_line=True)


def asys_text_only_no_antibodies() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """ASyS only as text 'Anti-synthetase syndrome', ILD J84.170, no antibody result at all, an old completed
    cyclophosphamide order (300 days: does not count)."""
    r = Record("acc-asys-txt", "Wilhelmina", "Textuell")
    r.cond("acc-asys-txt-asys", concept(text="Anti-synthetase syndrome"), days=400)
    r.cond("acc-asys-txt-ild", ILD_J84170, days=380)
    r.med_request("acc-asys-txt-cyc", CYCLOPHOSPHAMIDE, status="completed", days=300)
    r.obs("acc-asys-txt-hb", concept(coding(LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood")),
          valueQuantity={"value": 12.9, "unit": "g/dL"})
    r.renal_ok()
    ivig = draft(r.pid, "acc-asys-txt-ivig", concept(text="Octagam 10% intravenous solution"))
    return r, [ivig], table(ild=True, asys_coded=True, antibody_on_record=False)


def jo1_tacrolimus_coordered() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """Jo-1 positive (valueCodeableConcept SNOMED), M33.21 (PM with respiratory involvement = myositis and ILD),
    IVIG as text 'Gamunex-C 10% IV', tacrolimus co-ordered in draftOrders (not selected)."""
    r = Record("acc-jo1-tac", "Kalani", "Coorder")
    r.obs("acc-jo1-tac-ab", concept(coding(LOINC, "8076-2", "Jo-1 extractable nuclear Ab [Presence] in Serum")),
          days=45, valueCodeableConcept=POSITIVE_SNOMED)
    r.cond("acc-jo1-tac-pm", PM_RESP_M3321, days=90)
    r.renal_ok()
    ivig = draft(r.pid, "acc-jo1-tac-ivig", GAMUNEX_TEXT)
    tac = draft(r.pid, "acc-jo1-tac-tacro", TACROLIMUS)
    return r, [ivig, tac], table(ild=True, myositis=True, synthetase_positive=True, first_line=True)


def mda5_interpretation_bundled_medication() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """MDA5 by interpretation POS only, DM + ILD (SNOMED); the IVIG names a Medication bundled in draftOrders by
    fullUrl (NDC 11-digit Gamunex-C package code, no text)."""
    r = Record("acc-mda5-med", "Ines", "Referenz")
    r.obs("acc-mda5-med-ab", concept(coding(LOINC, "107563-9", "MDA5 Ab [Presence] in Serum or Plasma")), days=33,
          interpretation=interp("POS"))
    r.cond("acc-mda5-med-dm", DM_SNOMED, days=150)
    r.cond("acc-mda5-med-ild", ILD_SNOMED, days=140)
    r.renal_ok()
    ivig = draft(r.pid, "acc-mda5-med-ivig", None)
    return r, [ivig], table(ild=True, myositis=True, mda5=True)


def bundled_medication_entries(ivig: dict[str, Any], med_code: Any, reference_style: str) -> list[dict[str, Any]]:
    med_id = "acc-med-1"
    medication = {"resourceType": "Medication", "id": med_id, "code": med_code}
    if reference_style == "urn":
        full_url = f"urn:uuid:{uuid.uuid4()}"
        ivig["medicationReference"] = {"reference": full_url}
    else:
        full_url = f"https://ehr.acceptance.example.net/fhir/Medication/{med_id}"
        ivig["medicationReference"] = {"reference": f"Medication/{med_id}"}
    return [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": ivig}, {"fullUrl": full_url, "resource": medication}]


def asys_text_with_myositis_only() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """ASyS coded by text with dermatomyositis but no ILD, no antibody on record: only the missing-antibody card."""
    r = Record("acc-asys-myo", "Magnus", "Myositis")
    r.cond("acc-asys-myo-asys", concept(text="Antisynthetase syndrome (clinical diagnosis)"))
    r.cond("acc-asys-myo-dm", concept(coding(ICD10CM, "M33.12", "Other dermatomyositis with myopathy")))
    r.cond("acc-asys-myo-dys", concept(coding(SNOMED, "40739000", "Dysphagia")))
    r.renal_ok()
    ivig = draft(r.pid, "acc-asys-myo-ivig", concept(text="Panzyga 10% IV"))
    return r, [ivig], table(myositis=True, asys_coded=True, antibody_on_record=False)


def jo1_and_mda5_with_ild() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """Jo-1 strongly positive (text) and MDA5 positive (quantity) with ILD: both ASyS and MDA5 cards, one
    monitoring card."""
    r = Record("acc-jo1-mda5", "Dagny", "Doppel")
    r.obs("acc-jo1-mda5-jo1", concept(coding(LOINC, "8076-2")), valueString="Strongly positive")
    r.obs("acc-jo1-mda5-mda5", concept(coding(LOINC, "105529-2", "MDA5 Ab [Units/volume] in Serum")),
          valueQuantity={"value": 55, "unit": "U/mL"}, referenceRange=[{"high": {"value": 20, "unit": "U/mL"}}])
    r.cond("acc-jo1-mda5-ild", concept(coding(ICD10CM, "J84.9")))
    r.renal_ok()
    ivig = draft(r.pid, "acc-jo1-mda5-ivig", concept(coding(NDC, "64208-8234-02"), text="Gammaplex 5%"))
    return r, [ivig], table(ild=True, synthetase_positive=True, mda5=True)


def ild_with_other_myositis_antibody_result() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """ILD with only a negative Mi-2 result: an antibody result is on record, so nothing fires."""
    r = Record("acc-ild-mi2", "Otto", "Anderer")
    r.obs("acc-ild-mi2-mi2", concept(coding(LOINC, "82996-0")), valueString="Negative")
    r.cond("acc-ild-mi2-ild", ILD_SNOMED)
    r.renal_ok()
    ivig = draft(r.pid, "acc-ild-mi2-ivig", PRIVIGEN_NDC11)
    return r, [ivig], table(ild=True, antibody_on_record=True)


def ro52_only_positive_with_heart_failure() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """Isolated Ro52 positive (in scope by a positive myositis-associated antibody) with heart failure."""
    r = Record("acc-ro52-hf", "Hella", "Herz")
    r.obs("acc-ro52-hf-ro", concept(coding(LOINC, "53017-0")), valueQuantity={"value": 77, "unit": "U/mL"},
          interpretation=interp("H"), referenceRange=[{"high": {"value": 20}}])
    r.cond("acc-ro52-hf-hf", concept(coding(SNOMED, "42343007", "Congestive heart failure")))
    r.renal_ok()
    ivig = draft(r.pid, "acc-ro52-hf-ivig", PRIVIGEN_NDC11)
    return r, [ivig], table(ro52=True, safety="warning")


PATIENTS: dict[str, Callable[[], tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]]] = {
    "pl7-quantity-ro52-lineblot": pl7_quantity_ro52_lineblot,
    "pl12-string-fvc-components-rituxan": pl12_string_fvc_components_rituxan,
    "asys-text-only-no-antibodies": asys_text_only_no_antibodies,
    "jo1-tacrolimus-coordered": jo1_tacrolimus_coordered,
    "asys-text-with-myositis-only": asys_text_with_myositis_only,
    "jo1-and-mda5-with-ild": jo1_and_mda5_with_ild,
    "ild-with-other-myositis-antibody-result": ild_with_other_myositis_antibody_result,
    "ro52-only-positive-with-heart-failure": ro52_only_positive_with_heart_failure,
}


def in_scope_on_therapy(pid: str) -> Record:
    """Jo-1 positive (interpretation POS) with ILD, on prednisone: ASyS-ILD with first-line therapy."""
    r = Record(pid, "Sigrun", "Sicherheit")
    r.obs(f"{pid}-jo1", concept(coding(LOINC, "11565-9", "Jo-1 extractable nuclear Ab [Units/volume] in Serum")),
          days=80, valueQuantity={"value": 61, "unit": "AU/mL"}, interpretation=interp("POS"),
          referenceRange=[{"high": {"value": 29, "unit": "AU/mL"}}])
    r.cond(f"{pid}-ild", ILD_SNOMED, days=100)
    r.med_request(f"{pid}-pred", PREDNISONE, status="active", days=40)
    return r


ON_THERAPY = {"ild": True, "synthetase_positive": True, "first_line": True}


def asys_ild_record(pid: str, antibody: dict[str, Any] | None = None, ild: dict[str, Any] | None = None) -> Record:
    r = Record(pid, "Enzo", "Kodierung")
    if antibody is not None:
        r.add({"resourceType": "Observation", "id": f"{pid}-ab", "status": "final", "subject": r.subject,
               "category": copy.deepcopy(LAB_CATEGORY), "effectiveDateTime": ago_dt(30), **antibody})
    r.add({"resourceType": "Condition", "id": f"{pid}-ild", "subject": r.subject,
           **(ild or {"code": ILD_J8410, "clinicalStatus": concept(coding(CLINICAL, "active"))})})
    r.renal_ok()
    return r
