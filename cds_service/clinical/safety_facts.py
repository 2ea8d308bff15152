"""Facts only the ``ivig-safety`` rule reads: hypersensitivity to immune globulin or blood products
(AllergyIntolerance, Condition), anti-IgA antibodies (Observation, Condition), estrogen use, an
indwelling central venous catheter (Device, Procedure), an acute VTE, and IgA in mg/dL.  Pure.

Conditions that are plain diagnoses (diabetes, hyperviscosity, a catheter recorded as a Condition) are
read by ``facts._Extractor.condition`` through their ``ConditionKey``; this module reads what needs
another resource type or two value sets together.  Every value set is data under ``cards/valuesets``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds_service.clinical.assertion import Assertion, AssertionReader
from cds_service.clinical.contract import ConditionKey
from cds_service.clinical.dates import parse_date
from cds_service.clinical.grading import effective_date, grade_result, status_code
from cds_service.clinical.model import Fact
from cds_service.clinical.orders import DraftOrder, medication_concepts, reference_of
from cds_service.clinical.parameters import ClinicalParameters
from cds_service.clinical.patient import POSITIVE_GRADES, LabValue, PatientFacts
from cds_service.terminology import (
    NDC,
    Terminology,
    ValueSet,
    as_list,
    canonical_system,
    codings,
    concept_matches,
    concept_texts,
    ndc_product,
)

ALLERGY_NOT_COUNTED = {"inactive", "resolved", "refuted", "entered-in-error"}
CONDITION_EXCLUDED = {"refuted", "entered-in-error"}
CONDITION_INACTIVE = {"inactive", "resolved", "remission"}
DEVICE_NOT_COUNTED = {"inactive", "entered-in-error"}
ESTROGEN_REQUEST_STATUSES = {"active", "on-hold"}
ESTROGEN_STATEMENT_STATUSES = {"active"}
FINAL_STATUSES = {"final", "amended", "corrected", "preliminary"}

# IgA mass concentration units -> factor to mg/dL (units as UCUM codes or as written, lower case).
_IGA_TO_MG_DL: dict[str, float] = {"mg/dl": 1.0, "mg/100ml": 1.0, "g/l": 100.0, "mg/l": 0.1, "g/dl": 1000.0,
                                   "mg/ml": 100.0}

VS_ALLERGEN = "allergy-immune-globulin"
VS_REACTION = "reaction-hypersensitivity"
VS_ANTI_IGA = "lab-anti-iga"
VS_ESTROGEN = "medication-estrogen"
VS_VTE_PERSONAL_HISTORY = "condition-vte-personal-history"


@dataclass(frozen=True)
class SafetySets:
    allergen: ValueSet
    reaction: ValueSet
    anti_iga: ValueSet
    estrogen: ValueSet
    catheter: ValueSet
    vte_personal_history: ValueSet

    @classmethod
    def from_terminology(cls, t: Terminology) -> SafetySets:
        return cls(t[VS_ALLERGEN], t[VS_REACTION], t[VS_ANTI_IGA], t[VS_ESTROGEN],
                   t[ConditionKey.CENTRAL_VENOUS_CATHETER.value_set], t[VS_VTE_PERSONAL_HISTORY])


def _text(concept: Any) -> str:
    return next(iter(concept_texts(concept)), "") if concept is not None else ""


def _iso(d: date | None) -> str | None:
    return d.isoformat() if d else None


class SafetyReader:
    """Adds the safety facts of one call to ``facts`` (called from ``facts.FactReader``'s dispatch)."""

    def __init__(self, sets: SafetySets, parameters: ClinicalParameters, assertions: AssertionReader,
                 facts: PatientFacts, answers: Mapping[tuple[str, str], str]) -> None:
        self.sets = sets
        self.parameters = parameters
        self.assertions = assertions
        self.facts = facts
        self.answers = answers

    def _affirmed(self, text: str, vs: ValueSet) -> bool:
        return not text or self.assertions.assertion(text, vs.aliases) is Assertion.AFFIRMED

    # -- AllergyIntolerance ---------------------------------------------------------------
    def allergy(self, res: Mapping[str, Any]) -> None:
        if status_code(res.get("clinicalStatus")) in ALLERGY_NOT_COUNTED \
                or status_code(res.get("verificationStatus")) in ALLERGY_NOT_COUNTED:
            return
        reactions = [r for r in as_list(res.get("reaction")) if isinstance(r, Mapping)]
        substances = [res.get("code")] + [r.get("substance") for r in reactions]
        hit = next((c for c in substances if c is not None and concept_matches(self.sets.allergen, c)), None)
        if hit is None:
            return
        manifestations = [m for r in reactions for m in as_list(r.get("manifestation"))]
        if res.get("type") == "intolerance" and not any(concept_matches(self.sets.reaction, m)
                                                        for m in manifestations):
            return  # a non-immune intolerance is not the hypersensitivity the label names
        reaction = next((_text(m) for m in manifestations if _text(m)), "")
        shown = _text(hit) + (f" ({reaction})" if reaction else "")
        when = parse_date(res.get("onsetDateTime")) or parse_date(res.get("recordedDate"))
        self.facts.ig_hypersensitivity.append(Fact(label=self.sets.allergen.title, value_text=shown[:120] or None,
                                                   date=_iso(when), reference=reference_of(res)))

    # -- Condition --------------------------------------------------------------------------
    def condition(self, cond: Mapping[str, Any], anti_iga: bool | None = None, allergen: bool | None = None) -> None:
        """``anti_iga``/``allergen``: what the code matches, when the caller has it already."""
        code = cond.get("code")
        if anti_iga is None:
            anti_iga = concept_matches(self.sets.anti_iga, code) is not None
        if allergen is None:
            allergen = concept_matches(self.sets.allergen, code) is not None \
                and concept_matches(self.sets.reaction, code) is not None
        if not (anti_iga or allergen):
            return
        text = _text(code)
        if status_code(cond.get("verificationStatus")) in CONDITION_EXCLUDED:
            return
        if status_code(cond.get("clinicalStatus")) in CONDITION_INACTIVE and anti_iga:
            return  # a hypersensitivity is a history whatever its status; antibodies must be current
        vs = self.sets.anti_iga if anti_iga else self.sets.allergen
        assertion = self.assertions.assertion(text, vs.aliases) if text else Assertion.AFFIRMED
        if assertion in (Assertion.NEGATED, Assertion.FAMILY, Assertion.POSSIBLE):
            return
        fact = Fact(label=vs.title, value_text=text[:120] or None,
                    date=_iso(parse_date(cond.get("onsetDateTime")) or parse_date(cond.get("recordedDate"))),
                    reference=reference_of(cond))
        (self.facts.anti_iga if anti_iga else self.facts.ig_hypersensitivity).append(fact)

    def vte(self, fact: Fact, code: Any, when: date | None, active: bool) -> None:
        """A VTE Condition read by the condition reader: acute when active, dated within the acute
        window and not recorded as a personal history."""
        if not active or when is None or self.facts.today - when > self.parameters.days("acute_vte_days"):
            return
        if concept_matches(self.sets.vte_personal_history, code):
            return
        self.facts.acute_vte.append(fact)

    # -- Observation: anti-IgA antibodies ---------------------------------------------------
    def observation(self, obs: Mapping[str, Any], anti_iga: bool | None = None) -> None:
        """``anti_iga``: whether the code is an anti-IgA antibody test, when the caller has it already."""
        code = obs.get("code")
        if anti_iga is None:
            anti_iga = isinstance(code, Mapping) and concept_matches(self.sets.anti_iga, code) is not None
        if not anti_iga:
            return
        if obs.get("status") not in FINAL_STATUSES:
            return
        graded = grade_result(obs, self.answers)
        if graded.grade not in POSITIVE_GRADES:
            return
        self.facts.anti_iga.append(Fact(label=self.sets.anti_iga.title, value_key=graded.grade,
                                        value_text=graded.value_text or None, date=_iso(effective_date(obs)),
                                        reference=reference_of(obs)))

    # -- MedicationRequest / MedicationStatement: estrogen ----------------------------------
    def medication(self, med: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]],
                   concepts: list[Any] | None = None) -> None:
        """``concepts``: the medication's concepts, when the caller has read them already."""
        allowed = ESTROGEN_STATEMENT_STATUSES if med.get("resourceType") == "MedicationStatement" \
            else ESTROGEN_REQUEST_STATUSES if med.get("resourceType") in ("MedicationRequest", "MedicationOrder") \
            else set()
        if med.get("status") not in allowed:
            return
        if concepts is None:
            concepts = [c for c in medication_concepts(med, medications) if c is not None]
        hit = next((c for c in concepts if concept_matches(self.sets.estrogen, c)), None)
        if hit is None:
            return
        when = parse_date(med.get("authoredOn")) or parse_date(med.get("effectiveDateTime")) \
            or parse_date(med.get("dateAsserted"))
        self.facts.estrogen.append(Fact(label=self.sets.estrogen.title, value_text=_text(hit)[:120] or None,
                                        date=_iso(when), reference=reference_of(med)))

    # -- Device, Procedure: an indwelling central venous catheter ---------------------------
    def device(self, dev: Mapping[str, Any]) -> None:
        if status_code(dev.get("status")) in DEVICE_NOT_COUNTED:
            return
        names = [{"text": n.get("name")} for n in as_list(dev.get("deviceName"))
                 if isinstance(n, Mapping) and isinstance(n.get("name"), str)]
        concepts = [dev.get("type"), *names]
        hit = next((c for c in concepts if c is not None and concept_matches(self.sets.catheter, c)), None)
        if hit is None:
            return
        self.facts.catheters.append(Fact(label=self.sets.catheter.title, value_text=_text(hit)[:120] or None,
                                         reference=reference_of(dev)))

    def procedure(self, proc: Mapping[str, Any]) -> None:
        if proc.get("resourceType") != "Procedure" or proc.get("status") != "in-progress":
            return
        code = proc.get("code")
        if not concept_matches(self.sets.catheter, code):
            return
        period = proc.get("performedPeriod")
        when = parse_date(proc.get("performedDateTime")) or (
            parse_date(period.get("start")) if isinstance(period, Mapping) else None)
        self.facts.catheters.append(Fact(label=self.sets.catheter.title, value_text=_text(code)[:120] or None,
                                         date=_iso(when), reference=reference_of(proc)))


def iga_mg_dl(lab: LabValue) -> float | None:
    """The IgA value in mg/dL (rounded to remove float noise), or None when its unit is unknown."""
    for unit in lab.units:
        factor = _IGA_TO_MG_DL.get(unit.replace(" ", ""))
        if factor is not None:
            return round(lab.value * factor, 6)
    return None


def iga_below_deficiency_level(lab: LabValue, level_mg_dl: float) -> bool | None:
    """Is the IgA below the selective-deficiency level?  ``<x`` with x at or below the level reads as
    below it; None when the unit cannot be read."""
    value = iga_mg_dl(lab)
    if value is None:
        return None
    if lab.comparator in (">", ">="):
        return False
    if lab.comparator == "<":
        return value <= level_mg_dl
    return value < level_mg_dl


def product_texts(orders: list[DraftOrder], ivig: ValueSet | None,
                  concepts_of: Callable[[Mapping[str, Any]], list[Any]] | None = None) -> list[str]:
    """The orders' medication texts and coding displays, plus the display the IVIG value set gives a
    matched code (an order coded only by NDC names its product through it)."""
    texts: list[str] = []
    for order in orders:
        texts.append(order.display)
        concepts = concepts_of(order.resource) if concepts_of else \
            [c for c in medication_concepts(order.resource, {}) if c is not None]
        for concept in concepts:
            texts += list(concept_texts(concept))
            if ivig is None:
                continue
            for system, code, _ in codings(concept):
                system = canonical_system(system)
                wanted = ndc_product(code) if system == NDC else None
                for known in ivig.concepts:
                    if known.display and known.system == system and (
                            known.code == code.strip() or (wanted is not None and ndc_product(known.code) == wanted)):
                        texts.append(known.display)
    return [t for t in texts if t]
