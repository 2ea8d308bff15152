"""Patient facts from the FHIR resources gathered for a call.  Pure: no I/O.

Every resource is read leniently; one that cannot be read is skipped and named in a data note,
never an error.  Raw JSON is filtered by code before anything else is read, so a large prefetch
of unrelated labs costs one dictionary look-up (or one pre-compiled regex search) per resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from cds_service.clinical.contract import SYNTHETASE_ANTIBODIES, ConditionKey, LabKey, PftKey
from cds_service.clinical.dates import parse_date
from cds_service.clinical.grading import (
    Unreadable,
    effective_date,
    grade_result,
    number,
    reference_range,
    status_code,
)

# The value-set groups, importable from here too (tests and tools read them).
from cds_service.clinical.matching import ANTIBODIES as ANTIBODIES  # noqa: F401
from cds_service.clinical.matching import CONDITIONS as CONDITIONS  # noqa: F401
from cds_service.clinical.matching import LABS as LABS  # noqa: F401
from cds_service.clinical.matching import MATCHED_ANTIBODIES as MATCHED_ANTIBODIES  # noqa: F401
from cds_service.clinical.matching import (
    OTHER_ANTIBODIES,
    Catalogue,
    compile_catalogue,
)
from cds_service.clinical.matching import PFT_PERCENT as PFT_PERCENT  # noqa: F401
from cds_service.clinical.model import DataNote, Fact
from cds_service.clinical.orders import bundled_medications, medication_concepts, reference_of, route_texts_and_codes
from cds_service.terminology import (
    Terminology,
    ValueSet,
    as_list,
    codings,
    concept_matches,
    concept_texts,
)

FINAL_STATUSES = {"final", "amended", "corrected"}
POSITIVE_GRADES = {"positive", "strong-positive"}
ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
THERAPY_REQUEST_STATUSES = {"active", "completed", "on-hold"}
THERAPY_STATEMENT_STATUSES = {"active", "completed", "intended"}
THERAPY_WINDOW = timedelta(days=180)
PLASMA_EXCHANGE_RECENT = timedelta(days=7)
FVC_DECLINE_WINDOW = timedelta(days=90)
FVC_DECLINE_POINTS = 10.0
# Data sanity, not clinical advice: no human weighs a tonne; a larger value is a unit or entry error.
PLAUSIBLE_WEIGHT_KG = 1000.0

# -- facts ------------------------------------------------------------------------------

@dataclass(frozen=True)
class AntibodyResult:
    antibody: str
    status: str
    date: date | None
    reference: str
    value_text: str


@dataclass(frozen=True)
class LabValue:
    value: float
    unit: str
    date: date | None
    reference: str
    flag: str | None  # "high" | "low" | None
    low: float | None
    high: float | None
    comparator: str = ""
    ucum: str = ""  # valueQuantity.code (UCUM) when given: the unit to compute with

    @property
    def units(self) -> tuple[str, ...]:
        """The machine code first, then the display text: either may name the unit."""
        return tuple(u.strip().lower() for u in (self.ucum, self.unit) if u and u.strip())

    @property
    def text(self) -> str:
        return f"{self.comparator}{self.value:g} {self.unit}".strip()


@dataclass(frozen=True)
class Therapy:
    name: str
    reference: str
    date: date | None
    status: str
    co_ordered: bool
    pulse_methylprednisolone: bool


@dataclass
class PatientFacts:
    today: date
    antibodies: dict[str, AntibodyResult] = field(default_factory=dict)
    conditions: dict[str, list[Fact]] = field(default_factory=dict)
    asys_antibody_defined: bool = False
    fvc_decline: Fact | None = None
    therapies: list[Therapy] = field(default_factory=list)
    plasma_exchange: list[Fact] = field(default_factory=list)
    labs: dict[str, LabValue] = field(default_factory=dict)
    pft: dict[str, LabValue] = field(default_factory=dict)
    notes: list[DataNote] = field(default_factory=list)

    # -- derived ------------------------------------------------------------------------
    def has(self, condition: str) -> bool:
        return bool(self.conditions.get(condition))

    def antibody_positive(self, antibody: str) -> bool:
        result = self.antibodies.get(antibody)
        return result is not None and result.status in POSITIVE_GRADES

    @property
    def ild(self) -> bool:
        return self.has(ConditionKey.ILD)

    @property
    def rp_ild(self) -> bool:
        return self.has(ConditionKey.RP_ILD) or (self.ild and self.fvc_decline is not None)

    @property
    def myositis(self) -> bool:
        return self.has(ConditionKey.MYOSITIS)

    @property
    def asys(self) -> bool:
        return self.has(ConditionKey.ASYS) or self.asys_antibody_defined

    @property
    def any_antibody_positive(self) -> bool:
        return any(result.status in POSITIVE_GRADES for result in self.antibodies.values())

    @property
    def has_antibody_results(self) -> bool:
        return bool(self.antibodies)

    @property
    def first_line_on_record(self) -> list[Therapy]:
        return [t for t in self.therapies if not t.co_ordered]

    @property
    def first_line_co_ordered(self) -> list[Therapy]:
        return [t for t in self.therapies if t.co_ordered]


def _iso(d: date | None) -> str | None:
    return d.isoformat() if d else None


def _newer(candidate_date: date | None, current_date: date | None) -> bool:
    if current_date is None:
        return True
    return candidate_date is not None and candidate_date >= current_date


class _Extractor:
    def __init__(self, catalogue: Catalogue, today: date) -> None:
        self.cat = catalogue
        self.facts = PatientFacts(today=today)
        self.medications: dict[str, dict[str, Any]] = {}
        self.fvc_series: list[tuple[date, float, str]] = []

    def note(self, key: str, resource: Any) -> None:
        ref = reference_of(resource) if isinstance(resource, Mapping) else None
        self.facts.notes.append(DataNote("skipped-resource", key, ref))

    # -- observations -------------------------------------------------------------------
    def observation(self, obs: Mapping[str, Any]) -> None:
        code = obs.get("code")
        if code is not None and not isinstance(code, Mapping):
            raise Unreadable("unreadable-code")
        antibody_hits = self.cat.antibodies.match(code)
        lab_hits = [] if antibody_hits else self.cat.labs.match(code)
        pft_hits = [] if antibody_hits or lab_hits else self.cat.pft.match(code)
        component_hits: list[tuple[Mapping[str, Any], list[str], list[str]]] = []
        for component in as_list(obs.get("component")):
            if isinstance(component, Mapping):
                c_code = component.get("code")
                c_antibodies = self.cat.antibodies.match(c_code)
                c_pft = [] if c_antibodies else self.cat.pft.match(c_code)
                if c_antibodies or c_pft:
                    component_hits.append((component, c_antibodies, c_pft))
        if not (antibody_hits or lab_hits or pft_hits or component_hits):
            return  # not an observation any rule reads
        status = obs.get("status")
        if not isinstance(status, str):
            raise Unreadable("unreadable-status")
        if status not in FINAL_STATUSES:
            return
        when = effective_date(obs)
        ref = reference_of(obs)
        for name in antibody_hits:
            self._antibody(name, obs, when, ref)
        for name in lab_hits:
            self._lab(name, obs, when, ref)
        for name in pft_hits:
            self._pft(name, obs, when, ref)
        for component, c_antibodies, c_pft in component_hits:
            for name in c_antibodies:
                self._antibody(name, component, when, ref)
            for name in c_pft:
                self._pft(name, component, when, ref)

    def _antibody(self, name: str, obs: Mapping[str, Any], when: date | None, ref: str) -> None:
        graded = grade_result(obs, self.cat.answers)
        if name == OTHER_ANTIBODIES:
            # One entry per analyte (its first code, else its text), so a newer negative for one
            # antibody does not hide a positive for another.
            code = obs.get("code")
            analyte = next((c for _, c, _ in codings(code)), "") or next(iter(concept_texts(code)), "")
            name = f"{OTHER_ANTIBODIES}:{analyte}"
        current = self.facts.antibodies.get(name)
        if current is None or _newer(when, current.date):
            self.facts.antibodies[name] = AntibodyResult(name, graded.grade, when, ref, graded.value_text)

    def _quantity(self, obs: Mapping[str, Any], when: date | None, ref: str) -> LabValue | None:
        qty = obs.get("valueQuantity")
        if qty is None:
            return None
        if not isinstance(qty, Mapping):
            raise Unreadable("unreadable-value")
        value = number(qty.get("value"))
        if value is None:
            raise Unreadable("unreadable-value")
        unit = str(qty.get("unit") or qty.get("code") or "")
        ucum = str(qty["code"]) if isinstance(qty.get("code"), str) else ""
        comparator = qty.get("comparator") if isinstance(qty.get("comparator"), str) else ""
        low, high = reference_range(obs)
        flag: str | None = None
        for concept in as_list(obs.get("interpretation")):
            for _, code, _ in codings(concept):
                upper = code.strip().upper()
                if upper in ("H", "HH", "HU", "A", "AA", ">"):
                    flag = "high"
                elif upper in ("L", "LL", "LU", "<"):
                    flag = "low"
        if flag is None and high is not None and value > high:
            flag = "high"
        if flag is None and low is not None and (value < low or (value == low and comparator in ("<", "<="))):
            flag = "low"
        return LabValue(value, unit, when, ref, flag, low, high, str(comparator or ""), ucum)

    def _lab(self, name: str, obs: Mapping[str, Any], when: date | None, ref: str) -> None:
        lab = self._quantity(obs, when, ref)
        if lab is None:
            return
        if name == LabKey.WEIGHT:
            lab = _as_kilograms(lab)
            if lab is None:
                raise Unreadable("unreadable-value")
        current = self.facts.labs.get(name)
        if current is None or _newer(when, current.date):
            self.facts.labs[name] = lab

    def _pft(self, name: str, obs: Mapping[str, Any], when: date | None, ref: str) -> None:
        lab = self._quantity(obs, when, ref)
        if lab is None:
            return
        percent = [u for u in lab.units if u.startswith("%") or u in ("percent", "pct", "{percent}")
                   or u.startswith("percent ")]
        if lab.units and not percent:
            return  # a volume (L) or a predicted value, not a % predicted
        if name == PftKey.FVC_PCT and when is not None:
            self.fvc_series.append((when, lab.value, ref))
        current = self.facts.pft.get(name)
        if current is None or _newer(when, current.date):
            self.facts.pft[name] = lab

    # -- conditions ---------------------------------------------------------------------
    def condition(self, cond: Mapping[str, Any]) -> None:
        code = cond.get("code")
        if code is not None and not isinstance(code, Mapping):
            raise Unreadable("unreadable-code")
        hits = self.cat.conditions.match(code)
        if not hits:
            return
        verification = status_code(cond.get("verificationStatus"))
        if verification in EXCLUDED_VERIFICATION:
            return
        clinical = status_code(cond.get("clinicalStatus"))
        active = clinical is None or clinical in ACTIVE_CLINICAL
        when = (parse_date(cond.get("onsetDateTime")) or parse_date(cond.get("recordedDate"))
                or parse_date((cond.get("onsetPeriod") or {}).get("start")
                              if isinstance(cond.get("onsetPeriod"), Mapping) else None))
        text = next(iter(concept_texts(code)), "") if code is not None else ""
        for name in hits:
            # A history (VTE) counts whatever its clinical status; everything else must be current.
            if not active and name != ConditionKey.VTE_HISTORY:
                continue
            if name == ConditionKey.RP_ILD and ConditionKey.ILD not in hits:
                continue  # "rapidly progressive" must be said of the lung disease itself
            fact = Fact(label=self.cat.conditions.sets[name].title, value_text=text[:120] or None,
                        date=_iso(when), reference=reference_of(cond))
            self.facts.conditions.setdefault(name, []).append(fact)

    # -- medications --------------------------------------------------------------------
    def medication(self, med: Mapping[str, Any], co_ordered: bool = False) -> None:
        rtype = med.get("resourceType")
        status = med.get("status")
        if not isinstance(status, str):
            raise Unreadable("unreadable-status")
        if not co_ordered:
            allowed = THERAPY_STATEMENT_STATUSES if rtype == "MedicationStatement" else THERAPY_REQUEST_STATUSES
            if status not in allowed:
                return
        concepts = [c for c in medication_concepts(med, self.medications) if c is not None]
        if not any(concept_matches(self.cat.first_line, c) for c in concepts):
            return
        when = _medication_date(med)
        # An active order or statement is current therapy whatever its age; a completed or
        # paused one counts only when its latest date lies within the last 180 days.
        if not co_ordered and status != "active" and (when is None or self.facts.today - when > THERAPY_WINDOW):
            return
        name = ""
        for concept in concepts:
            name = next(iter(concept_texts(concept)), "") or next((c for _, c, _ in codings(concept)), "")
            if name:
                break
        pulse = any(concept_matches(self.cat.methylprednisolone, c) for c in concepts) and (
            any(concept_matches(self.cat.intravenous, r) for r in route_texts_and_codes(med))
            or any(concept_matches(self.cat.intravenous, c) for c in concepts))
        self.facts.therapies.append(Therapy(name[:120], reference_of(med), when, status, co_ordered, pulse))

    # -- plasma exchange ----------------------------------------------------------------
    def plasma_exchange(self, res: Mapping[str, Any]) -> None:
        code = res.get("code")
        if code is not None and not isinstance(code, Mapping):
            raise Unreadable("unreadable-code")
        if not concept_matches(self.cat.plasma_exchange, code):
            return
        status = res.get("status")
        if not isinstance(status, str):
            raise Unreadable("unreadable-status")
        when: date | None
        if res.get("resourceType") == "ServiceRequest":
            if status not in ("active", "draft"):
                return
            when = parse_date(res.get("occurrenceDateTime")) or parse_date(res.get("authoredOn"))
        else:
            period = res.get("performedPeriod")
            when = parse_date(res.get("performedDateTime")) or (
                (parse_date(period.get("end")) or parse_date(period.get("start")))
                if isinstance(period, Mapping) else None)
            recent = when is not None and abs(self.facts.today - when) <= PLASMA_EXCHANGE_RECENT
            if status not in ("in-progress", "preparation") and not (status == "completed" and recent):
                return
        text = next(iter(concept_texts(code)), "") if code is not None else ""
        self.facts.plasma_exchange.append(Fact(label=self.cat.plasma_exchange.title,
                                               value_text=(f"{text} ({status})" if text else status)[:120],
                                               date=_iso(when), reference=reference_of(res)))

    # -- derived facts ------------------------------------------------------------------
    def finish(self) -> PatientFacts:
        facts = self.facts
        if facts.has(ConditionKey.ILD) or facts.has(ConditionKey.MYOSITIS):
            facts.asys_antibody_defined = any(facts.antibody_positive(a) for a in SYNTHETASE_ANTIBODIES)
        facts.fvc_decline = _fvc_decline(self.fvc_series, self.cat.pft.sets.get(PftKey.FVC_PCT))
        return facts


_KILOGRAMS_PER = {"kg": 1.0, "kgs": 1.0, "kilogram": 1.0, "kilograms": 1.0, "g": 0.001, "gram": 0.001,
                  "grams": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237,
                  "lbs.": 0.45359237, "lb.": 0.45359237, "pound": 0.45359237, "pounds": 0.45359237,
                  "[oz_av]": 0.028349523125, "oz": 0.028349523125}


def _as_kilograms(lab: LabValue) -> LabValue | None:
    # The UCUM code decides when present; the display text is the fallback.
    factor = next((_KILOGRAMS_PER[u] for u in lab.units if u in _KILOGRAMS_PER), None)
    if factor is None or lab.value <= 0:
        return None
    kilograms = lab.value * factor
    if kilograms > PLAUSIBLE_WEIGHT_KG:
        return None  # a data error, not a weight: no dose is computed from it
    return LabValue(round(kilograms, 1), "kg", lab.date, lab.reference, None, None, None)


def _medication_date(med: Mapping[str, Any]) -> date | None:
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


def _fvc_decline(series: list[tuple[date, float, str]], vs: ValueSet | None) -> Fact | None:
    """A fall of ≥10 points in FVC % predicted from an earlier value within 90 days of the newest."""
    if len(series) < 2:
        return None
    series = sorted(series)
    newest_date, newest_value, newest_ref = series[-1]
    earlier = [(d, v, r) for d, v, r in series[:-1] if newest_date - d <= FVC_DECLINE_WINDOW]
    if not earlier:
        return None
    peak_date, peak_value, _ = max(earlier, key=lambda item: item[1])
    if peak_value - newest_value < FVC_DECLINE_POINTS:
        return None
    return Fact(label=vs.title if vs else "FVC % predicted",
                value_text=f"{peak_value:g} → {newest_value:g} ({peak_date.isoformat()} → {newest_date.isoformat()})",
                date=newest_date.isoformat(), reference=newest_ref)


class FactReader:
    """Reads patient facts; the value sets are compiled once, when the reader is built."""

    def __init__(self, terminology: Terminology) -> None:
        self._catalogue = compile_catalogue(terminology)

    def extract(self, resources: Iterable[Any], today: date, draft_orders: Iterable[Any] = (),
                exclude_references: Iterable[str] = ()) -> PatientFacts:
        """Facts from ``resources`` (all prefetched/fetched resources) and the call's other draft orders.

        ``exclude_references``: the IVIG orders themselves (not therapy "on record").
        """
        extractor = _Extractor(self._catalogue, today)
        resources = list(resources)
        draft_orders = [d for d in draft_orders if isinstance(d, Mapping)]
        extractor.medications = bundled_medications([r for r in resources + draft_orders if isinstance(r, dict)])
        excluded = set(exclude_references)
        for resource in resources:
            if not isinstance(resource, Mapping) or not isinstance(resource.get("resourceType"), str):
                extractor.facts.notes.append(DataNote("skipped-resource", "not-a-resource", None))
                continue
            rtype = resource["resourceType"]
            try:
                if rtype == "Observation":
                    extractor.observation(resource)
                elif rtype == "Condition":
                    extractor.condition(resource)
                elif rtype in ("MedicationRequest", "MedicationStatement", "MedicationOrder"):
                    if reference_of(resource) not in excluded:
                        extractor.medication(resource)
                elif rtype in ("ServiceRequest", "Procedure"):
                    extractor.plasma_exchange(resource)
            except Unreadable as problem:
                extractor.note(problem.key, resource)
            except (TypeError, AttributeError, ValueError, KeyError):
                extractor.note("unexpected-type", resource)
        for order in draft_orders:
            if reference_of(order) in excluded:
                continue
            try:
                if order.get("resourceType") in ("MedicationRequest", "MedicationOrder"):
                    extractor.medication(order, co_ordered=True)
                elif order.get("resourceType") == "ServiceRequest":
                    extractor.plasma_exchange({**order, "status": "draft"}
                                              if order.get("status") not in ("active", "draft") else order)
            except Unreadable as problem:
                extractor.note(problem.key, order)
            except (TypeError, AttributeError, ValueError, KeyError):
                extractor.note("unexpected-type", order)
        return extractor.finish()


def extract(resources: Iterable[Any], terminology: Terminology, today: date,
            draft_orders: Iterable[Any] = (), exclude_references: Iterable[str] = ()) -> PatientFacts:
    """One-off extraction (tests, tools); the service keeps one ``FactReader``."""
    return FactReader(terminology).extract(resources, today, draft_orders, exclude_references)
