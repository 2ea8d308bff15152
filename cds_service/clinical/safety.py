"""The ``ivig-safety`` rule: patient-specific risks of the IVIG order itself, as the prescribing
information words them (cards/references.yaml: label-octagam10, label-privigen, label-gamunex-c,
label-gammagard-liquid; esid-iga-definition for the IgA level).

Its risks do not depend on the order's indication or the patient's age: it applies to every IVIG
order of a patient in the clinical scope.  The card's indicator comes from its content (base ``info``,
raised per finding by ``indicator_rules``):

- contraindication (critical): anti-IgA antibodies, or hypersensitivity to immune globulin or blood
  products on record;
- warnings: renal impairment or no recent renal labs, VTE history, an acute VTE, heart failure, IgA
  deficiency (coded, or IgA below the selective-deficiency level), plasma exchange;
- predisposing factors the boxed warning names (info on their own): age over the boxed-warning age,
  diabetes mellitus, estrogen use, an indwelling central venous catheter, hyperviscosity;
- IgA below the lab's range but at or above the deficiency level is shown and fires nothing alone,
  nor does a kidney-disease diagnosis (renal labs decide; it is listed when the card shows).
"""

from __future__ import annotations

from cds_service.clinical.contract import CardId, ConditionKey, Finding, LabKey
from cds_service.clinical.factlines import condition_facts, lab_fact
from cds_service.clinical.model import Decision, Fact
from cds_service.clinical.parameters import ClinicalParameters
from cds_service.clinical.patient import PatientFacts
from cds_service.clinical.safety_facts import iga_below_deficiency_level
from cds_service.terminology import Terminology

C = ConditionKey

#: Prefetch keys of data only this card reads (engine/services.py names its templates with these).
SAFETY_LABS_KEY = "safetyLabs"
ALLERGIES_KEY = "allergies"
DEVICES_KEY = "devices"
PLASMA_EXCHANGE_KEYS = ("plasmaExchangeOrders", "plasmaExchangeProcedures")
SAFETY_ONLY_KEYS = frozenset({ALLERGIES_KEY, DEVICES_KEY, *PLASMA_EXCHANGE_KEYS})

#: Findings that show with the card but do not make it fire.
NOT_FIRING = frozenset({Finding.IGA_BELOW_RANGE, Finding.KIDNEY_DISEASE})
#: At most this many facts under "Why you are seeing this" (the card's detail stays short).
MAX_FACTS = 5


def _renal(facts: PatientFacts, t: Terminology, p: ClinicalParameters, failed_keys: frozenset[str],
           findings: set[Finding], used: list[Fact]) -> None:
    today = facts.today
    egfr = facts.labs.get(LabKey.EGFR)
    creatinine = facts.labs.get(LabKey.CREATININE)
    if egfr and egfr.date and today - egfr.date <= p.days("renal_abnormal_window_days") \
            and egfr.value < p.egfr_low and egfr.comparator not in (">", ">="):
        findings.add(Finding.EGFR_LOW)
        used.append(lab_fact(t, LabKey.EGFR.value_set, egfr))
    if creatinine and creatinine.date and today - creatinine.date <= p.days("renal_abnormal_window_days") \
            and creatinine.flag == "high":
        findings.add(Finding.CREATININE_HIGH)
        used.append(lab_fact(t, LabKey.CREATININE.value_set, creatinine))
    recent = [lab for lab in (egfr, creatinine) if lab and lab.date and today - lab.date <= p.days(
        "renal_recent_window_days")]
    if SAFETY_LABS_KEY in failed_keys:
        # When the labs could not be fetched the card says so through its data note.
        findings.add(Finding.RENAL_UNKNOWN)
    elif not recent:
        findings.add(Finding.RENAL_NOT_RECENT)
        used += [lab_fact(t, key.value_set, lab)
                 for key, lab in ((LabKey.EGFR, egfr), (LabKey.CREATININE, creatinine)) if lab]


def _iga(facts: PatientFacts, t: Terminology, p: ClinicalParameters, findings: set[Finding],
         used: list[Fact]) -> None:
    if facts.ig_hypersensitivity:
        findings.add(Finding.IG_HYPERSENSITIVITY)
        used += facts.ig_hypersensitivity[:2]
    if facts.anti_iga:
        findings.add(Finding.ANTI_IGA_ANTIBODIES)
        used += facts.anti_iga[:1]
    if facts.has(C.IGA_DEFICIENCY):
        findings.add(Finding.IGA_DEFICIENCY)
        used += condition_facts(facts, C.IGA_DEFICIENCY, limit=1)
    iga = facts.labs.get(LabKey.IGA)
    if iga is None:
        return
    # ESID: < 7 mg/dL in patients over 4 years (a younger child's IgA is physiologically low).
    old_enough = facts.age_years is None or facts.age_years > p.iga_deficiency_min_age_years
    if old_enough and iga_below_deficiency_level(iga, p.iga_selective_deficiency_mg_dl):
        findings.add(Finding.IGA_DEFICIENCY)
        used.append(lab_fact(t, LabKey.IGA.value_set, iga))
    elif iga.flag == "low":
        findings.add(Finding.IGA_BELOW_RANGE)
        used.append(lab_fact(t, LabKey.IGA.value_set, iga))


def ivig_safety(facts: PatientFacts, t: Terminology, parameters: ClinicalParameters,
                failed_keys: frozenset[str] = frozenset(), alone: bool = True) -> Decision | None:
    """``alone``: no other card fires; then data only this card reads that could not be retrieved
    fires it, so that its data note is not lost (otherwise the note goes on the cards that fire)."""
    findings: set[Finding] = set()
    used: list[Fact] = []
    _iga(facts, t, parameters, findings, used)
    _renal(facts, t, parameters, failed_keys, findings, used)
    if facts.acute_vte:
        findings.add(Finding.ACUTE_VTE)  # named as acute, not as history
        used += facts.acute_vte[:1]
    elif facts.has(C.VTE_HISTORY):
        findings.add(Finding.VTE_HISTORY)
        used += condition_facts(facts, C.VTE_HISTORY)
    if facts.has(C.HEART_FAILURE):
        findings.add(Finding.HEART_FAILURE)
        used += condition_facts(facts, C.HEART_FAILURE, limit=1)
    if facts.plasma_exchange:
        findings.add(Finding.PLASMA_EXCHANGE)
        used += facts.plasma_exchange[:1]
    # Predisposing factors named by the boxed warning.
    if facts.age_years is not None and facts.age_years > parameters.boxed_warning_age_years:
        findings.add(Finding.ADVANCED_AGE)
    for finding, key, extra in ((Finding.DIABETES, C.DIABETES, []),
                                (Finding.CENTRAL_VENOUS_CATHETER, C.CENTRAL_VENOUS_CATHETER, facts.catheters),
                                (Finding.HYPERVISCOSITY, C.HYPERVISCOSITY, [])):
        found = condition_facts(facts, key, limit=1) + extra[:1]
        if found:
            findings.add(finding)
            used += found[:1]
    if facts.estrogen:
        findings.add(Finding.ESTROGEN)
        used += facts.estrogen[:1]
    if alone and failed_keys & SAFETY_ONLY_KEYS:
        findings.add(Finding.SAFETY_DATA_UNAVAILABLE)  # its data note names what is missing
    if not findings - NOT_FIRING:
        return None
    if facts.has(C.KIDNEY_DISEASE):
        findings.add(Finding.KIDNEY_DISEASE)
        used += condition_facts(facts, C.KIDNEY_DISEASE, limit=1)
    return Decision(CardId.IVIG_SAFETY, used[:MAX_FACTS], findings)
