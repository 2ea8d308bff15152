"""The ``ivig-safety`` rule: patient-specific risks of the IVIG order itself (prescribing information).

Its risks do not depend on the order's indication or the patient's age: it applies to every IVIG
order of a patient in the clinical scope.
"""

from __future__ import annotations

from cds_service.clinical.contract import CardId, ConditionKey, Finding, LabKey
from cds_service.clinical.factlines import condition_facts, lab_fact
from cds_service.clinical.model import Decision, Fact
from cds_service.clinical.parameters import ClinicalParameters
from cds_service.clinical.patient import PatientFacts
from cds_service.terminology import Terminology

C = ConditionKey


def ivig_safety(facts: PatientFacts, t: Terminology, parameters: ClinicalParameters,
                failed_keys: frozenset[str] = frozenset()) -> Decision | None:
    findings: set[Finding] = set()
    used: list[Fact] = []
    today = facts.today
    egfr = facts.labs.get(LabKey.EGFR)
    creatinine = facts.labs.get(LabKey.CREATININE)
    if egfr and egfr.date and today - egfr.date <= parameters.days("renal_abnormal_window_days") \
            and egfr.value < parameters.egfr_low and egfr.comparator not in (">", ">="):
        findings.add(Finding.EGFR_LOW)
        used.append(lab_fact(t, LabKey.EGFR.value_set, egfr))
    if creatinine and creatinine.date and today - creatinine.date <= parameters.days("renal_abnormal_window_days") \
            and creatinine.flag == "high":
        findings.add(Finding.CREATININE_HIGH)
        used.append(lab_fact(t, LabKey.CREATININE.value_set, creatinine))
    recent_window = parameters.days("renal_recent_window_days")
    recent = [lab for lab in (egfr, creatinine) if lab and lab.date and today - lab.date <= recent_window]
    if not recent and "safetyLabs" not in failed_keys:
        # When the labs could not be fetched the card says so through its data note instead.
        findings.add(Finding.RENAL_NOT_RECENT)
        used += [lab_fact(t, key.value_set, lab)
                 for key, lab in ((LabKey.EGFR, egfr), (LabKey.CREATININE, creatinine)) if lab]
    if "safetyLabs" in failed_keys:
        findings.add(Finding.RENAL_UNKNOWN)
    if facts.has(C.VTE_HISTORY):
        findings.add(Finding.VTE_HISTORY)
        used += condition_facts(facts, C.VTE_HISTORY)
    iga = facts.labs.get(LabKey.IGA)
    if facts.has(C.IGA_DEFICIENCY):
        findings.add(Finding.IGA_DEFICIENCY)
        used += condition_facts(facts, C.IGA_DEFICIENCY)
    if iga and iga.flag == "low":
        findings.add(Finding.IGA_DEFICIENCY)
        used.append(lab_fact(t, LabKey.IGA.value_set, iga))
    if facts.has(C.HEART_FAILURE):
        findings.add(Finding.HEART_FAILURE)
        used += condition_facts(facts, C.HEART_FAILURE)
    if facts.plasma_exchange:
        findings.add(Finding.PLASMA_EXCHANGE)
        used += facts.plasma_exchange[:2]
    if not findings:
        return None
    # A CKD/AKI diagnosis is not a trigger of its own (the table: renal labs decide),
    # but when the card shows, it is part of the renal picture.
    if facts.has(C.KIDNEY_DISEASE):
        findings.add(Finding.KIDNEY_DISEASE)
        used += condition_facts(facts, C.KIDNEY_DISEASE)
    return Decision(CardId.IVIG_SAFETY, used, findings)
