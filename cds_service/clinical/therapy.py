"""What counts as first-line immunosuppression, and prior IVIG courses.  Pure.

Steroid-sparing agents (rituximab, cyclophosphamide, mycophenolate, azathioprine, calcineurin and
JAK inhibitors) count when active, or given within ``steroid_sparing_window_days``.  A systemic
glucocorticoid counts only when it treats the disease:

- an IV methylprednisolone pulse (a dose of at least ``pulse_methylprednisolone_min_mg``), or
- current (active/on-hold, or ended within ``glucocorticoid_current_window_days``) and not for
  another indication,

and never when it is premedication (cue words in its text, reason or dosage text), co-ordered with
the IVIG without a pulse dose or an in-scope reason, given by a non-systemic route, or for a reason
outside the clinical scope.  Each glucocorticoid not counted is kept with the reason, so the card
can say why it was not counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds_service.clinical.dates import parse_date
from cds_service.clinical.grading import number
from cds_service.clinical.parameters import ClinicalParameters
from cds_service.terminology import ValueSet, as_list, codings, concept_matches, concept_texts

REQUEST_STATUSES = {"active", "completed", "on-hold"}
STATEMENT_STATUSES = {"active", "completed", "intended"}
CURRENT_STATUSES = {"active", "on-hold", "intended"}

# Why a glucocorticoid was not counted (status keys shown through cards/_shared.yaml status_display).
NOT_COUNTED_PREMEDICATION = "gc-premedication"
NOT_COUNTED_OTHER_INDICATION = "gc-other-indication"
NOT_COUNTED_NOT_CURRENT = "gc-not-current"
NOT_COUNTED_NOT_SYSTEMIC = "gc-not-systemic"
NOT_COUNTED_CO_ORDERED = "gc-co-ordered-no-pulse"


@dataclass(frozen=True)
class Therapy:
    name: str
    reference: str
    date: date | None
    status: str
    co_ordered: bool
    pulse_methylprednisolone: bool
    glucocorticoid: bool = False


@dataclass(frozen=True)
class NotCounted:
    """A glucocorticoid on record or co-ordered that is not first-line therapy, and why."""

    name: str
    reference: str
    date: date | None
    reason: str


@dataclass(frozen=True)
class TherapySets:
    first_line: ValueSet
    glucocorticoid: ValueSet
    methylprednisolone: ValueSet
    intravenous: ValueSet


def medication_date(med: Mapping[str, Any]) -> date | None:
    """The latest date a request or statement carries (authored, asserted, period, bounds, validity)."""
    candidates: list[date | None] = [parse_date(med.get("authoredOn")), parse_date(med.get("dateAsserted")),
                                     parse_date(med.get("effectiveDateTime"))]
    period = med.get("effectivePeriod")
    if isinstance(period, Mapping):
        candidates += [parse_date(period.get("end")), parse_date(period.get("start"))]
    for dosage in as_list(med.get("dosageInstruction")) + as_list(med.get("dosage")):
        if isinstance(dosage, Mapping):
            timing = dosage.get("timing")
            repeat = timing.get("repeat") if isinstance(timing, Mapping) else None
            bounds = repeat.get("boundsPeriod") if isinstance(repeat, Mapping) else None
            if isinstance(bounds, Mapping):
                candidates += [parse_date(bounds.get("end")), parse_date(bounds.get("start"))]
    dispense = med.get("dispenseRequest")
    if isinstance(dispense, Mapping) and isinstance(dispense.get("validityPeriod"), Mapping):
        candidates.append(parse_date(dispense["validityPeriod"].get("end")))
    dated = [d for d in candidates if d is not None]
    return max(dated) if dated else None


def _ended(med: Mapping[str, Any]) -> date | None:
    """When an active statement or request says it ended (effectivePeriod.end / bounds end)."""
    ends: list[date | None] = []
    period = med.get("effectivePeriod")
    if isinstance(period, Mapping):
        ends.append(parse_date(period.get("end")))
    for dosage in as_list(med.get("dosageInstruction")) + as_list(med.get("dosage")):
        timing = dosage.get("timing") if isinstance(dosage, Mapping) else None
        repeat = timing.get("repeat") if isinstance(timing, Mapping) else None
        bounds = repeat.get("boundsPeriod") if isinstance(repeat, Mapping) else None
        if isinstance(bounds, Mapping):
            ends.append(parse_date(bounds.get("end")))
    dated = [d for d in ends if d is not None]
    return max(dated) if dated else None


_DOSE_TEXT = re.compile(r"(?<![0-9.,])([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+(?:\.[0-9]+)?)\s*(mg|g|gram|grams|milligrams?)\b",
                        re.I)


def dose_mg(med: Mapping[str, Any], texts: Iterable[str] = ()) -> float | None:
    """The largest single dose in mg the request or statement gives: doseQuantity in mg or g, else a
    strength written in its medication or dosage text ("Methylprednisolone 1 g IV")."""
    doses: list[float] = []
    for dosage in as_list(med.get("dosageInstruction")) + as_list(med.get("dosage")):
        if not isinstance(dosage, Mapping):
            continue
        for dose_rate in as_list(dosage.get("doseAndRate")):
            quantity = dose_rate.get("doseQuantity") if isinstance(dose_rate, Mapping) else None
            if not isinstance(quantity, Mapping):
                continue
            value = number(quantity.get("value"))
            unit = str(quantity.get("code") or quantity.get("unit") or "").strip().lower()
            if value is None:
                continue
            if unit in ("mg", "milligram", "milligrams"):
                doses.append(value)
            elif unit in ("g", "gram", "grams"):
                doses.append(value * 1000)
    if not doses:
        for text in texts:
            for amount, unit in _DOSE_TEXT.findall(text):
                value = float(amount.replace(",", ""))
                doses.append(value * 1000 if unit.lower() in ("g", "gram", "grams") else value)
    return max(doses) if doses else None


def _texts(med: Mapping[str, Any]) -> list[str]:
    """Free text that may say what the medication is for: note, reason text, dosage text."""
    found: list[str] = []
    for concept in as_list(med.get("reasonCode")):
        found += list(concept_texts(concept))
    for dosage in as_list(med.get("dosageInstruction")) + as_list(med.get("dosage")):
        if isinstance(dosage, Mapping):
            for key in ("text", "patientInstruction"):
                if isinstance(dosage.get(key), str):
                    found.append(dosage[key])
            for instruction in as_list(dosage.get("additionalInstruction")):
                found += list(concept_texts(instruction))
    for note in as_list(med.get("note")):
        if isinstance(note, Mapping) and isinstance(note.get("text"), str):
            found.append(note["text"])
    medication = med.get("medicationCodeableConcept")
    if isinstance(medication, Mapping):
        found += list(concept_texts(medication))
    return found


def _route_texts(med: Mapping[str, Any]) -> list[Any]:
    routes: list[Any] = []
    for dosage in as_list(med.get("dosageInstruction")) + as_list(med.get("dosage")):
        if isinstance(dosage, Mapping) and dosage.get("route") is not None:
            routes.append(dosage["route"])
    return routes


@dataclass
class TherapyReader:
    """Classifies one medication resource already known to be a first-line agent."""

    sets: TherapySets
    parameters: ClinicalParameters
    today: date
    #: The clinical scope of a reason: True in scope, False outside, None when it cannot be told.
    reason_in_scope: Callable[[Mapping[str, Any]], bool | None]

    def classify(self, med: Mapping[str, Any], concepts: list[Any], co_ordered: bool) -> Therapy | NotCounted | None:
        status = str(med.get("status"))
        when = medication_date(med)
        name = _name(concepts)
        reference = f"{med.get('resourceType')}/{med.get('id')}"
        if not any(concept_matches(self.sets.glucocorticoid, c) for c in concepts):
            return self._steroid_sparing(status, when, name, reference, co_ordered)
        routes = _route_texts(med)
        intravenous = any(concept_matches(self.sets.intravenous, r) for r in routes) or any(
            concept_matches(self.sets.intravenous, c) for c in concepts)
        methylprednisolone = any(concept_matches(self.sets.methylprednisolone, c) for c in concepts)
        texts = _texts(med)
        dose = dose_mg(med, [*texts, name])
        pulse = methylprednisolone and intravenous and dose is not None \
            and dose >= self.parameters.pulse_methylprednisolone_min_mg
        reason = self.reason_in_scope(med)

        def not_counted(why: str) -> NotCounted:
            return NotCounted(name, reference, when, why)

        if any(self.parameters.is_premedication_text(t) for t in texts):
            return not_counted(NOT_COUNTED_PREMEDICATION)
        if routes and not intravenous and not any(self.parameters.is_systemic_route(r) for r in routes):
            return not_counted(NOT_COUNTED_NOT_SYSTEMIC)
        if reason is False:
            return not_counted(NOT_COUNTED_OTHER_INDICATION)
        if co_ordered:
            if pulse or reason is True:
                return Therapy(name, reference, when, status, True, pulse, True)
            return not_counted(NOT_COUNTED_CO_ORDERED)
        if pulse:
            if when is not None and self.today - when <= self.parameters.days("steroid_sparing_window_days"):
                return Therapy(name, reference, when, status, False, True, True)
            return not_counted(NOT_COUNTED_NOT_CURRENT)
        window = self.parameters.days("glucocorticoid_current_window_days")
        if status in CURRENT_STATUSES:
            ended = _ended(med)
            if ended is None or self.today - ended <= window:
                return Therapy(name, reference, when, status, False, False, True)
            return not_counted(NOT_COUNTED_NOT_CURRENT)
        if when is not None and self.today - when <= window:
            return Therapy(name, reference, when, status, False, False, True)
        return not_counted(NOT_COUNTED_NOT_CURRENT)

    def _steroid_sparing(self, status: str, when: date | None, name: str, reference: str,
                         co_ordered: bool) -> Therapy | None:
        # An active order or statement is current therapy whatever its age; a completed or
        # paused one counts only within the window.
        if not co_ordered and status != "active" and (
                when is None or self.today - when > self.parameters.days("steroid_sparing_window_days")):
            return None
        return Therapy(name, reference, when, status, co_ordered, False, False)


def _name(concepts: Iterable[Any]) -> str:
    for concept in concepts:
        name = next(iter(concept_texts(concept)), "") or next((c for _, c, _ in codings(concept)), "")
        if name:
            return name[:120]
    return ""
