"""Rules -> which cards, and why.  Pure: plain facts in, decisions out.

One function per card; ``RULES`` reads like the rules table.  Names shared with the card content
(card ids, findings, template variables) come from ``clinical/contract.py``; windows and
thresholds from ``ClinicalParameters`` (``cards/clinical-parameters.yaml``).

Gates, in order (``decide``):
1. an IVIG order in scope and a patient in the clinical scope (ILD, myositis, ASyS, a positive
   myositis antibody), else no card;
2. ``ivig-safety`` whenever 1 holds: its risks belong to the order, whatever the indication or age;
3. the other cards only for an adult (or unknown age, with a data note) and an IVIG order whose
   named indication is in the clinical scope (or that names none).
"""

from __future__ import annotations

from collections.abc import Callable

from cds_service.clinical.contract import (
    SCOPE_CONDITIONS,
    SYNTHETASE_ANTIBODIES,
    Antibody,
    AntibodyView,
    CardId,
    ConditionKey,
    Finding,
    LabKey,
    LabView,
    PftKey,
    ProductView,
    TemplateVariables,
)
from cds_service.clinical.factlines import antibody_fact, condition_facts, iso, lab_fact, possible_facts
from cds_service.clinical.model import DataNote, Decision, Evaluation, Fact
from cds_service.clinical.orders import DraftOrder
from cds_service.clinical.parameters import ClinicalParameters
from cds_service.clinical.patient import LabValue, PatientFacts
from cds_service.clinical.safety import ivig_safety
from cds_service.clinical.safety_facts import product_texts
from cds_service.terminology import Terminology

C = ConditionKey


def in_clinical_scope(facts: PatientFacts) -> bool:
    return facts.ild or facts.myositis or facts.asys or facts.any_antibody_positive


def _asys_facts(facts: PatientFacts, terminology: Terminology) -> list[Fact]:
    used = condition_facts(facts, C.ASYS, C.ILD, C.RP_ILD, C.MYOSITIS)
    for name in SYNTHETASE_ANTIBODIES:
        if facts.antibody_positive(name):
            fact = antibody_fact(facts, name, terminology)
            if fact:
                used.append(fact)
    if facts.fvc_decline:
        used.append(facts.fvc_decline)
    return used + possible_facts(facts, *SCOPE_CONDITIONS)


def _therapy_facts(facts: PatientFacts, terminology: Terminology) -> list[Fact]:
    label = terminology["medication-first-line"].title
    return [Fact(label=label, value_text=t.name or None, value_key=None if t.name else "on-record",
                 date=iso(t.date), reference=t.reference)
            for t in facts.therapies[:6]]


def _not_counted_facts(facts: PatientFacts, terminology: Terminology) -> list[Fact]:
    label = terminology["medication-glucocorticoid"].title
    return [Fact(label=label, value_key=n.reason, value_text=n.name or None, date=iso(n.date), reference=n.reference)
            for n in facts.not_counted[:3]]


def _course_facts(facts: PatientFacts, terminology: Terminology) -> list[Fact]:
    if not facts.ivig_courses:
        return []
    when, reference = facts.ivig_courses[-1]
    label = terminology["medication-ivig"].title
    return [Fact(label=label, value_key="prior-ivig-courses",
                 value_text=str(len(facts.ivig_courses)), date=iso(when), reference=reference)]


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
    if not facts.therapies:
        findings.add(Finding.NO_FIRST_LINE)
    elif all(t.glucocorticoid for t in facts.therapies):
        findings.add(Finding.GLUCOCORTICOID_ONLY)
    if facts.pregnancy is not None:
        findings.add(Finding.PREGNANCY)
    if facts.ivig_courses:
        findings.add(Finding.PRIOR_IVIG)
        if len(facts.ivig_courses) > 1:
            findings.add(Finding.REPEATED_IVIG)
    if any(facts.possible_conditions.get(name) for name in SCOPE_CONDITIONS):
        findings.add(Finding.POSSIBLE_DIAGNOSIS)
    return findings


def _context_facts(facts: PatientFacts, terminology: Terminology) -> list[Fact]:
    """Facts every treatment card shows when present: pregnancy, prior IVIG courses."""
    return ([facts.pregnancy] if facts.pregnancy else []) + _course_facts(facts, terminology)


def _asys_ild(facts: PatientFacts) -> bool:
    return facts.asys and facts.ild


def ivig_not_first_line(facts: PatientFacts, t: Terminology, p: ClinicalParameters) -> Decision | None:
    if not _asys_ild(facts) or facts.therapies:
        return None
    return Decision(CardId.IVIG_NOT_FIRST_LINE,
                    _asys_facts(facts, t) + _not_counted_facts(facts, t) + _context_facts(facts, t),
                    _common_findings(facts))


def ivig_adjunct_in_context(facts: PatientFacts, t: Terminology, p: ClinicalParameters) -> Decision | None:
    if not _asys_ild(facts) or not facts.therapies:
        return None
    return Decision(CardId.IVIG_ADJUNCT_IN_CONTEXT,
                    _asys_facts(facts, t) + _therapy_facts(facts, t) + _context_facts(facts, t),
                    _common_findings(facts))


def asys_high_risk_phenotype(facts: PatientFacts, t: Terminology, p: ClinicalParameters) -> Decision | None:
    # PL-7 and Ro52 both positive (not only weakly) with rapidly progressive ILD: the phenotype the
    # source ties to RP-ILD, not stable long-standing ILD.
    if not (facts.antibody_confirmed(Antibody.PL7) and facts.antibody_confirmed(Antibody.RO52)
            and facts.ild and facts.rp_ild):
        return None
    used = [f for f in (antibody_fact(facts, Antibody.PL7, t), antibody_fact(facts, Antibody.RO52, t)) if f]
    used += condition_facts(facts, C.ILD, C.RP_ILD)
    if facts.fvc_decline:
        used.append(facts.fvc_decline)
    return Decision(CardId.ASYS_HIGH_RISK_PHENOTYPE, used + _context_facts(facts, t), _common_findings(facts))


def mda5_ild_ivig_adjunct(facts: PatientFacts, t: Terminology, p: ClinicalParameters) -> Decision | None:
    if not (facts.antibody_positive(Antibody.MDA5) and facts.ild):
        return None
    used = [f for f in (antibody_fact(facts, Antibody.MDA5, t),) if f] + condition_facts(facts, C.ILD, C.RP_ILD)
    used += _therapy_facts(facts, t) if facts.therapies else _not_counted_facts(facts, t)
    return Decision(CardId.MDA5_ILD_IVIG_ADJUNCT, used + _context_facts(facts, t), _common_findings(facts))


def ild_monitoring(facts: PatientFacts, t: Terminology, p: ClinicalParameters) -> Decision | None:
    if not facts.ild or not (facts.asys or facts.antibody_positive(Antibody.MDA5)):
        return None
    used = condition_facts(facts, C.ILD, C.RP_ILD)
    for name in (*SYNTHETASE_ANTIBODIES, Antibody.MDA5):
        if facts.antibody_positive(name):
            fact = antibody_fact(facts, name, t)
            if fact:
                used.append(fact)
    for key in PftKey:
        lab = facts.pft.get(key)
        if lab:
            used.append(lab_fact(t, key.value_set, lab))
    used += facts.pft_ordered[:1]
    findings = _common_findings(facts)
    window = p.days("pft_recent_days")
    if facts.pft_ordered or any(facts.today - d <= window for d in facts.pft_dates):
        findings.add(Finding.PFT_RECENT)  # no PFT order is offered
    return Decision(CardId.ILD_MONITORING, used, findings)


def myositis_antibodies_missing(facts: PatientFacts, t: Terminology, p: ClinicalParameters) -> Decision | None:
    if not (facts.ild or facts.myositis) or facts.has_antibody_results:
        return None
    if facts.has(C.IPF) and not facts.myositis:
        return None  # IPF is diagnosed once connective-tissue disease is excluded
    return Decision(CardId.MYOSITIS_ANTIBODIES_MISSING, condition_facts(facts, C.ILD, C.MYOSITIS),
                    _common_findings(facts))


RULES: tuple[Callable[[PatientFacts, Terminology, ClinicalParameters], Decision | None], ...] = (
    ivig_not_first_line, ivig_adjunct_in_context, asys_high_risk_phenotype, mda5_ild_ivig_adjunct,
    ild_monitoring, myositis_antibodies_missing,
)


def decide(facts: PatientFacts, orders: list[DraftOrder], terminology: Terminology, parameters: ClinicalParameters,
           failed_keys: frozenset[str] = frozenset()) -> Evaluation:
    """Decisions for one call (unordered: the indicator comes from content)."""
    variables = template_variables(facts, orders, terminology, parameters)
    notes = list(facts.notes) + [DataNote("failed-key", key) for key in sorted(failed_keys)]
    if not orders or not in_clinical_scope(facts):
        return Evaluation([], variables, notes)
    decisions: list[Decision] = []
    if facts.adult and facts.indication != "other":
        decisions = [d for d in (rule(facts, terminology, parameters) for rule in RULES) if d is not None]
    safety = ivig_safety(facts, terminology, parameters, failed_keys, alone=not decisions)
    if safety is not None:
        decisions.append(safety)
    return Evaluation(decisions, variables, notes)


def _lab_view(lab: LabValue | None) -> LabView | None:
    if lab is None:
        return None
    return LabView(value=lab.value, unit=lab.unit, text=lab.text, date=iso(lab.date), flag=lab.flag,
                   reference=lab.reference)


def _product_view(orders: list[DraftOrder], t: Terminology, parameters: ClinicalParameters) -> ProductView | None:
    """The ordered product, when its prescribing information is in the content (else generic wording)."""
    ivig = t["medication-ivig"]
    product = parameters.product_for(product_texts(orders, ivig))
    if product is None or not product.reference:
        return None
    return ProductView(key=product.key, name=product.name, reference=product.reference,
                       iga_content=product.iga_content, stabiliser=product.stabiliser,
                       sucrose_free=product.sucrose_free, infusion_rate=product.infusion_rate)


def template_variables(facts: PatientFacts, orders: list[DraftOrder], t: Terminology,
                       parameters: ClinicalParameters) -> TemplateVariables:
    """The patient values card templates may use (the contract's ``TemplateVariables``)."""
    weight = facts.labs.get(LabKey.WEIGHT)
    # A dose is computed only from a current weight, and never for a child.
    current = weight is not None and weight.date is not None and facts.adult \
        and facts.today - weight.date <= parameters.days("dosing_weight_max_age_days")
    antibodies = {}
    for antibody in Antibody:
        result = facts.antibodies.get(antibody)
        vs_id = antibody.value_set
        antibodies[antibody.value] = AntibodyView(
            label=t[vs_id].title if vs_id in t else antibody.value,
            status=result.status if result else "unknown",
            date=iso(result.date) if result else None,
            reference=result.reference if result else None,
        )
    first = orders[0] if orders else None
    last_course = facts.ivig_courses[-1][0] if facts.ivig_courses else None
    return TemplateVariables(
        weight_kg=weight.value if weight and current else None,
        weight_date=iso(weight.date) if weight and current else None,
        weight_found_kg=weight.value if weight and not current and facts.adult else None,
        weight_found_date=iso(weight.date) if weight and not current and facts.adult else None,
        order_display=first.display if first else "",
        order_reference=next((o.reference for o in orders if o.reference), ""),
        order_references=[o.reference for o in orders if o.reference],
        antibodies=antibodies,
        egfr=_lab_view(facts.labs.get(LabKey.EGFR)),
        creatinine=_lab_view(facts.labs.get(LabKey.CREATININE)),
        iga=_lab_view(facts.labs.get(LabKey.IGA)),
        therapy=[th.name for th in facts.therapies if th.name],
        prior_ivig_courses=len(facts.ivig_courses),
        prior_ivig_last_date=iso(last_course),
        age_years=facts.age_years,
        product=_product_view(orders, t, parameters),
    )
