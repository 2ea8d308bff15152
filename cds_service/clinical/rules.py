"""Rules -> which cards, and why.  Pure: plain facts in, decisions out.

Names shared with the card content (card ids, findings, template variables) come from
``clinical/contract.py``.

The table in issue 3 item 4, one function per card id.  Card text lives in ``cards/``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from cds_service.clinical.contract import (
    SYNTHETASE_ANTIBODIES,
    Antibody,
    AntibodyView,
    CardId,
    ConditionKey,
    Finding,
    LabKey,
    LabView,
    PftKey,
    TemplateVariables,
)
from cds_service.clinical.facts import LabValue, PatientFacts
from cds_service.clinical.matching import ANTIBODIES
from cds_service.clinical.model import DataNote, Decision, Evaluation, Fact
from cds_service.clinical.orders import DraftOrder
from cds_service.terminology import Terminology

C = ConditionKey

RENAL_ABNORMAL_WINDOW = timedelta(days=90)
RENAL_RECENT_WINDOW = timedelta(days=30)
EGFR_LOW = 60.0


def in_clinical_scope(facts: PatientFacts) -> bool:
    return facts.ild or facts.myositis or facts.asys or facts.any_antibody_positive


def _antibody_fact(facts: PatientFacts, name: str, terminology: Terminology) -> Fact | None:
    result = facts.antibodies.get(name)
    if result is None:
        return None
    label = terminology[ANTIBODIES[name]].title if ANTIBODIES[name] in terminology else name
    return Fact(label=label, value_key=result.status, value_text=result.value_text or None,
                date=result.date.isoformat() if result.date else None, reference=result.reference)


def _condition_facts(facts: PatientFacts, *names: str) -> list[Fact]:
    found: list[Fact] = []
    for name in names:
        for fact in facts.conditions.get(name, [])[:2]:
            if fact not in found:
                found.append(fact)
    return found


def _asys_facts(facts: PatientFacts, terminology: Terminology) -> list[Fact]:
    used = _condition_facts(facts, C.ASYS, C.ILD, C.RP_ILD, C.MYOSITIS)
    for name in SYNTHETASE_ANTIBODIES:
        if facts.antibody_positive(name):
            fact = _antibody_fact(facts, name, terminology)
            if fact:
                used.append(fact)
    if facts.fvc_decline:
        used.append(facts.fvc_decline)
    return used


def _therapy_facts(facts: PatientFacts, terminology: Terminology) -> list[Fact]:
    label = terminology["medication-first-line"].title
    return [Fact(label=label, value_text=t.name or None, value_key=None if t.name else "on-record",
                 date=t.date.isoformat() if t.date else None, reference=t.reference)
            for t in facts.therapies[:6]]


def _common_findings(facts: PatientFacts) -> set[Finding]:
    findings: set[Finding] = set()
    if facts.rp_ild:
        findings.add(Finding.RP_ILD)
    if facts.fvc_decline:
        findings.add(Finding.FVC_DECLINE)
    if any(t.pulse_methylprednisolone for t in facts.therapies):
        findings.add(Finding.PULSE_METHYLPREDNISOLONE)
    if facts.has(C.DYSPHAGIA):
        findings.add(Finding.DYSPHAGIA)
    if facts.myositis:
        findings.add(Finding.MYOSITIS)
    if facts.first_line_on_record:
        findings.add(Finding.FIRST_LINE_ON_RECORD)
    if facts.first_line_co_ordered:
        findings.add(Finding.FIRST_LINE_CO_ORDERED)
    return findings


def _asys_ild(facts: PatientFacts) -> bool:
    return facts.asys and facts.ild


def ivig_not_first_line(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not _asys_ild(facts) or facts.therapies:
        return None
    return Decision(CardId.IVIG_NOT_FIRST_LINE, _asys_facts(facts, t), _common_findings(facts))


def ivig_adjunct_in_context(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not _asys_ild(facts) or not facts.therapies:
        return None
    return Decision(CardId.IVIG_ADJUNCT_IN_CONTEXT, _asys_facts(facts, t) + _therapy_facts(facts, t),
                    _common_findings(facts))


def asys_high_risk_phenotype(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not (facts.antibody_positive(Antibody.PL7) and facts.antibody_positive(Antibody.RO52) and facts.ild):
        return None
    used = [f for f in (_antibody_fact(facts, Antibody.PL7, t), _antibody_fact(facts, Antibody.RO52, t)) if f]
    used += _condition_facts(facts, C.ILD, C.RP_ILD)
    if facts.fvc_decline:
        used.append(facts.fvc_decline)
    return Decision(CardId.ASYS_HIGH_RISK_PHENOTYPE, used, _common_findings(facts))


def mda5_ild_ivig_adjunct(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not (facts.antibody_positive(Antibody.MDA5) and facts.ild):
        return None
    used = [f for f in (_antibody_fact(facts, Antibody.MDA5, t),) if f] + _condition_facts(facts, C.ILD, C.RP_ILD)
    return Decision(CardId.MDA5_ILD_IVIG_ADJUNCT, used, _common_findings(facts))


def _lab_fact(t: Terminology, vs_id: str, lab: LabValue) -> Fact:
    return Fact(label=t[vs_id].title if vs_id in t else vs_id, value_text=lab.text,
                value_key=f"flag-{lab.flag}" if lab.flag else None,
                date=lab.date.isoformat() if lab.date else None, reference=lab.reference)


def ivig_safety(facts: PatientFacts, t: Terminology, failed_keys: frozenset[str] = frozenset()) -> Decision | None:
    findings: set[Finding] = set()
    used: list[Fact] = []
    today = facts.today
    egfr = facts.labs.get(LabKey.EGFR)
    creatinine = facts.labs.get(LabKey.CREATININE)
    if egfr and egfr.date and today - egfr.date <= RENAL_ABNORMAL_WINDOW \
            and egfr.value < EGFR_LOW and egfr.comparator not in (">", ">="):
        findings.add(Finding.EGFR_LOW)
        used.append(_lab_fact(t, LabKey.EGFR.value_set, egfr))
    if creatinine and creatinine.date and today - creatinine.date <= RENAL_ABNORMAL_WINDOW \
            and creatinine.flag == "high":
        findings.add(Finding.CREATININE_HIGH)
        used.append(_lab_fact(t, LabKey.CREATININE.value_set, creatinine))
    recent = [lab for lab in (egfr, creatinine) if lab and lab.date and today - lab.date <= RENAL_RECENT_WINDOW]
    if not recent and "safetyLabs" not in failed_keys:
        # When the labs could not be fetched the card says so through its data note instead.
        findings.add(Finding.RENAL_NOT_RECENT)
        used += [_lab_fact(t, key.value_set, lab)
                 for key, lab in ((LabKey.EGFR, egfr), (LabKey.CREATININE, creatinine)) if lab]
    if "safetyLabs" in failed_keys:
        findings.add(Finding.RENAL_UNKNOWN)
    if facts.has(C.VTE_HISTORY):
        findings.add(Finding.VTE_HISTORY)
        used += _condition_facts(facts, C.VTE_HISTORY)
    iga = facts.labs.get(LabKey.IGA)
    if facts.has(C.IGA_DEFICIENCY):
        findings.add(Finding.IGA_DEFICIENCY)
        used += _condition_facts(facts, C.IGA_DEFICIENCY)
    if iga and iga.flag == "low":
        findings.add(Finding.IGA_DEFICIENCY)
        used.append(_lab_fact(t, LabKey.IGA.value_set, iga))
    if facts.has(C.HEART_FAILURE):
        findings.add(Finding.HEART_FAILURE)
        used += _condition_facts(facts, C.HEART_FAILURE)
    if facts.plasma_exchange:
        findings.add(Finding.PLASMA_EXCHANGE)
        used += facts.plasma_exchange[:2]
    if not findings:
        return None
    # A CKD/AKI diagnosis is not a trigger of its own (the table: renal labs decide),
    # but when the card shows, it is part of the renal picture.
    if facts.has(C.KIDNEY_DISEASE):
        findings.add(Finding.KIDNEY_DISEASE)
        used += _condition_facts(facts, C.KIDNEY_DISEASE)
    return Decision(CardId.IVIG_SAFETY, used, findings)


def ild_monitoring(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not facts.ild or not (facts.asys or facts.antibody_positive(Antibody.MDA5)):
        return None
    used = _condition_facts(facts, C.ILD, C.RP_ILD)
    for name in (*SYNTHETASE_ANTIBODIES, Antibody.MDA5):
        if facts.antibody_positive(name):
            fact = _antibody_fact(facts, name, t)
            if fact:
                used.append(fact)
    for key in PftKey:
        lab = facts.pft.get(key)
        if lab:
            used.append(_lab_fact(t, key.value_set, lab))
    return Decision(CardId.ILD_MONITORING, used, _common_findings(facts))


def myositis_antibodies_missing(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not (facts.ild or facts.myositis) or facts.has_antibody_results:
        return None
    return Decision(CardId.MYOSITIS_ANTIBODIES_MISSING, _condition_facts(facts, C.ILD, C.MYOSITIS),
                    _common_findings(facts))


RULES: tuple[Callable[[PatientFacts, Terminology], Decision | None], ...] = (
    ivig_not_first_line, ivig_adjunct_in_context, asys_high_risk_phenotype, mda5_ild_ivig_adjunct,
    ild_monitoring, myositis_antibodies_missing,
)


def decide(facts: PatientFacts, orders: list[DraftOrder], terminology: Terminology,
           failed_keys: frozenset[str] = frozenset()) -> Evaluation:
    """Decisions for one call (unordered: the indicator comes from content)."""
    variables = template_variables(facts, orders, terminology)
    notes = list(facts.notes) + [DataNote("failed-key", key) for key in sorted(failed_keys)]
    if not orders or not in_clinical_scope(facts):
        return Evaluation([], variables, notes)
    decisions = [d for d in (rule(facts, terminology) for rule in RULES) if d is not None]
    safety = ivig_safety(facts, terminology, failed_keys)
    if safety is not None:
        decisions.append(safety)
    return Evaluation(decisions, variables, notes)


def _lab_view(lab: LabValue | None) -> LabView | None:
    if lab is None:
        return None
    return LabView(value=lab.value, unit=lab.unit, text=lab.text, date=lab.date.isoformat() if lab.date else None,
                   flag=lab.flag, reference=lab.reference)


def template_variables(facts: PatientFacts, orders: list[DraftOrder], t: Terminology) -> TemplateVariables:
    """The patient values card templates may use (the contract's ``TemplateVariables``)."""
    weight = facts.labs.get(LabKey.WEIGHT)
    antibodies = {}
    for antibody in Antibody:
        result = facts.antibodies.get(antibody)
        vs_id = antibody.value_set
        antibodies[antibody.value] = AntibodyView(
            label=t[vs_id].title if vs_id in t else antibody.value,
            status=result.status if result else "unknown",
            date=result.date.isoformat() if result and result.date else None,
            reference=result.reference if result else None,
        )
    first = orders[0] if orders else None
    return TemplateVariables(
        weight_kg=weight.value if weight else None,
        weight_date=weight.date.isoformat() if weight and weight.date else None,
        order_display=first.display if first else "",
        order_reference=next((o.reference for o in orders if o.reference), ""),
        order_references=[o.reference for o in orders if o.reference],
        antibodies=antibodies,
        egfr=_lab_view(facts.labs.get(LabKey.EGFR)),
        creatinine=_lab_view(facts.labs.get(LabKey.CREATININE)),
        iga=_lab_view(facts.labs.get(LabKey.IGA)),
        therapy=[th.name for th in facts.therapies if th.name],
    )
