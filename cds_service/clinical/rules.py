"""Rules -> which cards, and why.  Pure: plain facts in, decisions out.

The table in issue 3 item 4, one function per card id.  Card text lives in ``cards/``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cds_service.clinical.facts import ANTIBODIES, SYNTHETASE_ANTIBODIES, PatientFacts
from cds_service.clinical.model import DataNote, Decision, Evaluation, Fact
from cds_service.clinical.orders import DraftOrder
from cds_service.terminology import Terminology

RENAL_ABNORMAL_WINDOW = timedelta(days=90)
RENAL_RECENT_WINDOW = timedelta(days=30)
EGFR_LOW = 60.0
INDICATOR_ORDER = {"critical": 0, "warning": 1, "info": 2}


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
    used = _condition_facts(facts, "asys", "ild", "rp_ild", "myositis")
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


def _common_findings(facts: PatientFacts) -> set[str]:
    findings: set[str] = set()
    if facts.rp_ild:
        findings.add("rp-ild")
    if facts.fvc_decline:
        findings.add("fvc-decline")
    if any(t.pulse_methylprednisolone for t in facts.therapies):
        findings.add("pulse-methylprednisolone")
    if facts.has("dysphagia"):
        findings.add("dysphagia")
    if facts.myositis:
        findings.add("myositis")
    if facts.first_line_on_record:
        findings.add("first-line-on-record")
    if facts.first_line_co_ordered:
        findings.add("first-line-co-ordered")
    return findings


def _asys_ild(facts: PatientFacts) -> bool:
    return facts.asys and facts.ild


def ivig_not_first_line(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not _asys_ild(facts) or facts.therapies:
        return None
    return Decision("ivig-not-first-line", _asys_facts(facts, t), _common_findings(facts))


def ivig_adjunct_in_context(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not _asys_ild(facts) or not facts.therapies:
        return None
    return Decision("ivig-adjunct-in-context", _asys_facts(facts, t) + _therapy_facts(facts, t),
                    _common_findings(facts))


def asys_high_risk_phenotype(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not (facts.antibody_positive("pl7") and facts.antibody_positive("ro52") and facts.ild):
        return None
    used = [f for f in (_antibody_fact(facts, "pl7", t), _antibody_fact(facts, "ro52", t)) if f]
    used += _condition_facts(facts, "ild", "rp_ild")
    if facts.fvc_decline:
        used.append(facts.fvc_decline)
    return Decision("asys-high-risk-phenotype", used, _common_findings(facts))


def mda5_ild_ivig_adjunct(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not (facts.antibody_positive("mda5") and facts.ild):
        return None
    used = [f for f in (_antibody_fact(facts, "mda5", t),) if f] + _condition_facts(facts, "ild", "rp_ild")
    return Decision("mda5-ild-ivig-adjunct", used, _common_findings(facts))


def _lab_fact(t: Terminology, vs_id: str, lab: Any) -> Fact:
    return Fact(label=t[vs_id].title if vs_id in t else vs_id, value_text=lab.text,
                value_key=f"flag-{lab.flag}" if lab.flag else None,
                date=lab.date.isoformat() if lab.date else None, reference=lab.reference)


def ivig_safety(facts: PatientFacts, t: Terminology, failed_keys: frozenset[str] = frozenset()) -> Decision | None:
    findings: set[str] = set()
    used: list[Fact] = []
    today = facts.today
    egfr = facts.labs.get("egfr")
    creatinine = facts.labs.get("creatinine")
    if egfr and egfr.date and today - egfr.date <= RENAL_ABNORMAL_WINDOW \
            and egfr.value < EGFR_LOW and egfr.comparator not in (">", ">="):
        findings.add("egfr-low")
        used.append(_lab_fact(t, "lab-egfr", egfr))
    if creatinine and creatinine.date and today - creatinine.date <= RENAL_ABNORMAL_WINDOW \
            and creatinine.flag == "high":
        findings.add("creatinine-high")
        used.append(_lab_fact(t, "lab-creatinine", creatinine))
    recent = [lab for lab in (egfr, creatinine) if lab and lab.date and today - lab.date <= RENAL_RECENT_WINDOW]
    if not recent and "safetyLabs" not in failed_keys:
        # When the labs could not be fetched the card says so through its data note instead.
        findings.add("renal-not-recent")
        used += [_lab_fact(t, vs, lab) for vs, lab in (("lab-egfr", egfr), ("lab-creatinine", creatinine)) if lab]
    if "safetyLabs" in failed_keys:
        findings.add("renal-unknown")
    if facts.has("vte_history"):
        findings.add("vte-history")
        used += _condition_facts(facts, "vte_history")
    iga = facts.labs.get("iga")
    if facts.has("iga_deficiency"):
        findings.add("iga-deficiency")
        used += _condition_facts(facts, "iga_deficiency")
    if iga and iga.flag == "low":
        findings.add("iga-deficiency")
        used.append(_lab_fact(t, "lab-iga", iga))
    if facts.has("heart_failure"):
        findings.add("heart-failure")
        used += _condition_facts(facts, "heart_failure")
    if facts.plasma_exchange:
        findings.add("plasma-exchange")
        used += facts.plasma_exchange[:2]
    if not findings:
        return None
    # A CKD/AKI diagnosis is not a trigger of its own (the table: renal labs decide),
    # but when the card shows, it is part of the renal picture.
    if facts.has("kidney_disease"):
        findings.add("kidney-disease")
        used += _condition_facts(facts, "kidney_disease")
    return Decision("ivig-safety", used, findings)


def ild_monitoring(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not facts.ild or not (facts.asys or facts.antibody_positive("mda5")):
        return None
    used = _condition_facts(facts, "ild", "rp_ild")
    for name in (*SYNTHETASE_ANTIBODIES, "mda5"):
        if facts.antibody_positive(name):
            fact = _antibody_fact(facts, name, t)
            if fact:
                used.append(fact)
    for name, vs_id in (("fvc_pct", "lab-fvc-pct"), ("dlco_pct", "lab-dlco-pct")):
        lab = facts.pft.get(name)
        if lab:
            used.append(_lab_fact(t, vs_id, lab))
    return Decision("ild-monitoring", used, _common_findings(facts))


def myositis_antibodies_missing(facts: PatientFacts, t: Terminology) -> Decision | None:
    if not (facts.ild or facts.myositis) or facts.has_antibody_results:
        return None
    return Decision("myositis-antibodies-missing", _condition_facts(facts, "ild", "myositis"),
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


def template_variables(facts: PatientFacts, orders: list[DraftOrder], t: Terminology) -> dict[str, Any]:
    """The Jinja context of CONTRACTS §4 (names shared with the card content)."""
    weight = facts.labs.get("weight")

    def lab(name: str) -> dict[str, Any] | None:
        value = facts.labs.get(name)
        if value is None:
            return None
        return {"value": value.value, "unit": value.unit, "text": value.text,
                "date": value.date.isoformat() if value.date else None, "flag": value.flag,
                "reference": value.reference}

    antibodies = {}
    for name, vs_id in ANTIBODIES.items():
        result = facts.antibodies.get(name)
        antibodies[name] = {
            "label": t[vs_id].title if vs_id in t else name,
            "status": result.status if result else "unknown",
            "date": result.date.isoformat() if result and result.date else None,
            "reference": result.reference if result else None,
        }
    first = orders[0] if orders else None
    return {
        "weight_kg": weight.value if weight else None,
        "weight_date": weight.date.isoformat() if weight and weight.date else None,
        "order_display": first.display if first else "",
        "order_reference": next((o.reference for o in orders if o.reference), ""),
        "order_references": [o.reference for o in orders if o.reference],
        "antibodies": antibodies,
        "egfr": lab("egfr"),
        "creatinine": lab("creatinine"),
        "iga": lab("iga"),
        "therapy": [th.name for th in facts.therapies if th.name],
    }
