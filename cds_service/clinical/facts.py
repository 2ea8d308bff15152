"""Patient facts from the FHIR resources gathered for a call.  Pure: no I/O.

Every resource is read leniently; one that cannot be read is skipped and named in a data note,
never an error.  Raw JSON is filtered by code before anything else is read: each code (or a
medication's concepts) is reduced to a hashable key and looked up in a cache on the compiled
``Catalogue``, so a large prefetch of unrelated labs costs one key build and one dictionary look-up
per resource.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Any

from cds_service.clinical.assertion import AffirmingReader, Assertion, AssertionReader
from cds_service.clinical.contract import SCOPE_CONDITIONS, SYNTHETASE_ANTIBODIES, ConditionKey, PftKey
from cds_service.clinical.dates import parse_date
from cds_service.clinical.grading import Unreadable, status_code

# The value-set groups, importable from here too (tests and tools read them).
from cds_service.clinical.matching import ANTIBODIES as ANTIBODIES  # noqa: F401
from cds_service.clinical.matching import CONDITIONS as CONDITIONS  # noqa: F401
from cds_service.clinical.matching import LABS as LABS  # noqa: F401
from cds_service.clinical.matching import MATCHED_ANTIBODIES as MATCHED_ANTIBODIES  # noqa: F401
from cds_service.clinical.matching import PFT_PERCENT as PFT_PERCENT  # noqa: F401
from cds_service.clinical.matching import Catalogue, compile_catalogue
from cds_service.clinical.measures import fvc_decline
from cds_service.clinical.model import DataNote, Fact
from cds_service.clinical.observations import FINAL_STATUSES as FINAL_STATUSES  # noqa: F401
from cds_service.clinical.observations import ObservationReader
from cds_service.clinical.orders import bundled_medications, medication_concepts, outside_vein, reference_of
from cds_service.clinical.parameters import ClinicalParameters
from cds_service.clinical.patient import POSITIVE_GRADES as POSITIVE_GRADES  # noqa: F401
from cds_service.clinical.patient import AntibodyResult as AntibodyResult  # noqa: F401
from cds_service.clinical.patient import LabValue as LabValue  # noqa: F401
from cds_service.clinical.patient import PatientFacts
from cds_service.clinical.safety_facts import SafetyReader
from cds_service.clinical.therapy import NotCounted, Therapy, TherapyReader, TherapySets, medication_date
from cds_service.terminology import (
    ConceptKey,
    Terminology,
    as_list,
    codings,
    concept_matches,
    concept_texts,
    concepts_key,
)

ACTIVE_CLINICAL = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
POSSIBLE_VERIFICATION = {"provisional", "differential", "unconfirmed"}
THERAPY_REQUEST_STATUSES = {"active", "completed", "on-hold"}
THERAPY_STATEMENT_STATUSES = {"active", "completed", "intended"}
IVIG_COURSE_REQUEST_STATUSES = {"active", "completed"}
IVIG_COURSE_ADMINISTRATION_STATUSES = {"completed", "in-progress"}
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationOrder", "MedicationAdministration")
# Conditions whose history counts whatever their clinical status.
HISTORY_CONDITIONS = (ConditionKey.VTE_HISTORY,)


def _iso(d: date | None) -> str | None:
    return d.isoformat() if d else None


class _Extractor(ObservationReader):
    def __init__(self, catalogue: Catalogue, today: date, parameters: ClinicalParameters,
                 assertions: AssertionReader) -> None:
        self.cat = catalogue
        self.parameters = parameters
        self.assertions = assertions
        self.facts = PatientFacts(today=today)
        self.medications: dict[str, dict[str, Any]] = {}
        self.fvc_series: list[tuple[date, float, str]] = []
        self.condition_codes: dict[str, Any] = {}  # Condition reference -> its code (reasons)
        self.excluded: set[str] = set()  # the IVIG orders' own references
        self.pregnancy_status: tuple[date, bool, str] | None = None
        self.patient_seen = False
        self.safety = SafetyReader(catalogue.safety, parameters, assertions, self.facts, catalogue.answers)
        self.therapy = TherapyReader(TherapySets(catalogue.first_line, catalogue.glucocorticoid,
                                                 catalogue.methylprednisolone, catalogue.intravenous),
                                     parameters, today, self.reason_in_scope)

    def note(self, key: str, resource: Any) -> None:
        ref = reference_of(resource) if isinstance(resource, Mapping) else None
        self.facts.notes.append(DataNote("skipped-resource", key, ref))

    # -- conditions ---------------------------------------------------------------------
    def condition(self, cond: Mapping[str, Any]) -> None:
        """A Condition, and its safety facts (the code read once: ``Catalogue.condition_profile``)."""
        code = cond.get("code")
        if code is not None and not isinstance(code, Mapping):
            raise Unreadable("unreadable-code")
        profile = self.cat.condition_profile(code)
        if profile.hits:
            self._condition(cond, code, profile.hits)
        if profile.anti_iga or profile.allergen:
            self.safety.condition(cond, profile.anti_iga, profile.allergen)

    def _condition(self, cond: Mapping[str, Any], code: Any, hits: tuple[str, ...]) -> None:
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
            if name == ConditionKey.RP_ILD and ConditionKey.ILD not in hits:
                continue  # "rapidly progressive" must be said of the lung disease itself
            assertion = self.assertions.assertion(text, self.cat.conditions.sets[name].aliases) if text \
                else Assertion.AFFIRMED
            if assertion in (Assertion.NEGATED, Assertion.FAMILY):
                continue  # not the patient's own, present diagnosis
            history = name in HISTORY_CONDITIONS
            # A history (VTE) counts whatever its clinical status; everything else must be current.
            if not history and (not active or assertion is Assertion.HISTORICAL):
                continue
            fact = Fact(label=self.cat.conditions.sets[name].title, value_text=text[:120] or None,
                        date=_iso(when), reference=reference_of(cond))
            if verification in POSSIBLE_VERIFICATION or assertion is Assertion.POSSIBLE:
                fact = Fact(fact.label, "possible", fact.value_text, fact.date, fact.reference)
                self.facts.possible_conditions.setdefault(name, []).append(fact)
                continue
            if name == ConditionKey.PREGNANCY and (
                    when is None or self.facts.today - when > self.parameters.days("pregnancy_window_days")):
                continue  # an old or undated pregnancy entry is not an active pregnancy
            self.facts.conditions.setdefault(name, []).append(fact)
            if name == ConditionKey.VTE_HISTORY and assertion is Assertion.AFFIRMED:
                self.safety.vte(fact, code, when, active)

    def reason_in_scope(self, resource: Mapping[str, Any]) -> bool | None:
        """Does a resource's reasonCode/reasonReference name the clinical scope?  True: at least one
        named reason is in scope; False: reasons are named and none is; None: none named, or one
        cannot be resolved."""
        concepts = [c for c in as_list(resource.get("reasonCode")) if isinstance(c, Mapping)]
        unresolved = False
        for ref in as_list(resource.get("reasonReference")):
            target = ref.get("reference") if isinstance(ref, Mapping) else None
            code = self.condition_codes.get(target) if isinstance(target, str) else None
            if code is None:
                unresolved = True
            else:
                concepts.append(code)
        if not concepts:
            return None
        for concept in concepts:
            hits = self.cat.conditions.match(concept)
            if any(h in SCOPE_CONDITIONS for h in hits):
                text = next(iter(concept_texts(concept)), "")
                if not text or self.assertions.assertion(text) is Assertion.AFFIRMED:
                    return True
        return None if unresolved else False

    # -- medications --------------------------------------------------------------------
    def medication_on_record(self, med: Mapping[str, Any]) -> None:
        """A medication resource of the record (not one of the IVIG orders), and its safety facts."""
        if reference_of(med) not in self.excluded:
            concepts = self.medication(med)
            self.safety.medication(med, self.medications, concepts)

    def medication(self, med: Mapping[str, Any], co_ordered: bool = False) -> list[Any] | None:
        """Therapy or an IVIG course; returns the medication's concepts when it read them."""
        rtype = med.get("resourceType")
        status = med.get("status")
        if not isinstance(status, str):
            raise Unreadable("unreadable-status")
        if rtype == "MedicationAdministration":
            self._ivig_course(med, status)
            return None
        if not co_ordered:
            allowed = THERAPY_STATEMENT_STATUSES if rtype == "MedicationStatement" else THERAPY_REQUEST_STATUSES
            if status not in allowed:
                return None
        concepts = [c for c in medication_concepts(med, self.medications) if c is not None]
        key = concepts_key(concepts)
        if not self.cat.first_line_medication(concepts, key):
            if not co_ordered:
                self._ivig_course(med, status, concepts, key)
            return concepts
        found = self.therapy.classify(med, concepts, co_ordered)
        if isinstance(found, Therapy):
            self.facts.therapies.append(found)
        elif isinstance(found, NotCounted):
            self.facts.not_counted.append(found)
        return concepts

    def _ivig_course(self, med: Mapping[str, Any], status: str, concepts: list[Any] | None = None,
                     key: ConceptKey = ()) -> None:
        """A past or running IVIG request or administration: one course each (``orders.is_ivig``)."""
        allowed = IVIG_COURSE_ADMINISTRATION_STATUSES if med.get("resourceType") == "MedicationAdministration" \
            else IVIG_COURSE_REQUEST_STATUSES
        if status not in allowed or med.get("intent") in ("proposal", "plan"):
            return
        if concepts is None:
            concepts = [c for c in medication_concepts(med, self.medications) if c is not None]
            key = concepts_key(concepts)
        if not self.cat.ivig_medication(concepts, key) or outside_vein(med, self.cat.terminology):
            return
        when = medication_date(med)
        if when is None or self.facts.today - when > self.parameters.days("prior_ivig_window_days"):
            return
        self.facts.ivig_courses.append((when, reference_of(med)))

    # -- plasma exchange ----------------------------------------------------------------
    def service_on_record(self, res: Mapping[str, Any]) -> None:
        self.service(res)
        self.safety.procedure(res)

    def service(self, res: Mapping[str, Any]) -> None:
        code = res.get("code")
        if code is not None and not isinstance(code, Mapping):
            raise Unreadable("unreadable-code")
        if res.get("resourceType") == "ServiceRequest" and res.get("status") in ("active", "draft", "on-hold") \
                and concept_matches(self.cat.pft_order, code):
            text = next(iter(concept_texts(code)), "") if code is not None else ""
            self.facts.pft_ordered.append(Fact(label=self.cat.pft_order.title, value_text=text[:120] or None,
                                               date=_iso(parse_date(res.get("authoredOn"))),
                                               reference=reference_of(res)))
            return
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
            window = self.parameters.days("plasma_exchange_recent_days")
            recent = when is not None and abs(self.facts.today - when) <= window
            if status not in ("in-progress", "preparation") and not (status == "completed" and recent):
                return
        text = next(iter(concept_texts(code)), "") if code is not None else ""
        self.facts.plasma_exchange.append(Fact(label=self.cat.plasma_exchange.title,
                                               value_text=(f"{text} ({status})" if text else status)[:120],
                                               date=_iso(when), reference=reference_of(res)))

    def patient(self, patient: Mapping[str, Any]) -> None:
        self.patient_seen = True
        birth = parse_date(patient.get("birthDate"))
        if birth is None or birth > self.facts.today:
            return
        today = self.facts.today
        self.facts.age_years = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))

    def indication(self, orders: list[Mapping[str, Any]]) -> None:
        """The IVIG order's own indication (reasonCode, reasonReference resolved against the record)."""
        verdicts = [self.reason_in_scope(order) for order in orders]
        named: list[bool | None] = [v for v in verdicts if v is not None]
        if not named and any(as_list(o.get("reasonCode")) or as_list(o.get("reasonReference")) for o in orders):
            named = [None]  # named but unresolvable: it may be in scope
        for order in orders:
            for concept in as_list(order.get("reasonCode")):
                text = next(iter(concept_texts(concept)), "") or next((c for _, c, _ in codings(concept)), "")
                if text:
                    self.facts.indication_facts.append(Fact(label="IVIG order indication", value_text=text[:120],
                                                            reference=reference_of(order)))
        if not named:
            self.facts.indication = "unspecified"
        elif all(v is False for v in named):
            self.facts.indication = "other"
        else:
            self.facts.indication = "in-scope"

    # -- derived facts ------------------------------------------------------------------
    def finish(self) -> PatientFacts:
        facts = self.facts
        if facts.has(ConditionKey.ILD) or facts.has(ConditionKey.MYOSITIS):
            # A weak-positive synthetase antibody alone does not define ASyS (weak line-blot bands are
            # often false positives).
            facts.asys_antibody_defined = any(facts.antibody_confirmed(a) for a in SYNTHETASE_ANTIBODIES)
        facts.fvc_decline = fvc_decline(self.fvc_series, self.cat.pft.sets.get(PftKey.FVC_PCT), self.parameters)
        facts.adult = facts.age_years is None or facts.age_years >= self.parameters.adult_age_years
        if self.patient_seen and facts.age_years is None:
            facts.notes.append(DataNote("failed-key", "patientBirthDate"))
        window = self.parameters.days("pregnancy_window_days")
        pregnancy = facts.conditions.get(ConditionKey.PREGNANCY)
        if self.pregnancy_status is not None:
            when, positive, ref = self.pregnancy_status
            condition_dates = [d for d in (parse_date(f.date) for f in pregnancy or []) if d is not None]
            newest_condition = max(condition_dates, default=None)
            if not positive and (newest_condition is None or newest_condition <= when):
                pregnancy = None  # a newer negative status ends the pregnancy on record
            elif positive and facts.today - when <= window:
                pregnancy = (pregnancy or []) + [Fact(label=self.cat.pregnancy_status.title, value_key="pregnant",
                                                      date=_iso(when), reference=ref)]
        facts.pregnancy = pregnancy[0] if pregnancy else None
        facts.ivig_courses.sort()
        return facts


class FactReader:
    """Reads patient facts; the value sets are compiled once, when the reader is built."""

    def __init__(self, terminology: Terminology, parameters: ClinicalParameters,
                 assertions: AssertionReader | None = None) -> None:
        self._catalogue = compile_catalogue(terminology)
        self.parameters = parameters
        self.assertions: AssertionReader = assertions or AffirmingReader()

    def extract(self, resources: Iterable[Any], today: date, draft_orders: Iterable[Any] = (),
                exclude_references: Iterable[str] = (), orders: Iterable[Mapping[str, Any]] = ()) -> PatientFacts:
        """Facts from ``resources`` (all prefetched/fetched resources) and the call's other draft orders.

        ``exclude_references``: the IVIG orders themselves (not therapy "on record"); ``orders``: their
        resources, whose reasons are the order's indication.
        """
        extractor = _Extractor(self._catalogue, today, self.parameters, self.assertions)
        resources = list(resources)
        draft_orders = [d for d in draft_orders if isinstance(d, Mapping)]
        medications: list[dict[str, Any]] = []
        for r in resources:  # one pass for what other resources refer to
            if r.__class__ is dict or isinstance(r, Mapping):  # (a dict, in practice: checked cheaply)
                rtype = r.get("resourceType")
                if rtype == "Medication" and isinstance(r, dict):
                    medications.append(r)
                elif rtype == "Condition" and isinstance(r.get("code"), Mapping):
                    extractor.condition_codes[reference_of(r)] = r.get("code")
        extractor.medications = bundled_medications(medications + [d for d in draft_orders if isinstance(d, dict)])
        extractor.excluded = set(exclude_references)
        readers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "Observation": extractor.observation, "Condition": extractor.condition,  # and their safety facts
            **dict.fromkeys(MEDICATION_TYPES, extractor.medication_on_record),
            "ServiceRequest": extractor.service_on_record, "Procedure": extractor.service_on_record,
            "Patient": extractor.patient, "AllergyIntolerance": extractor.safety.allergy,
            "Device": extractor.safety.device}
        for resource in resources:
            rtype = resource.get("resourceType") if resource.__class__ is dict or isinstance(resource, Mapping) \
                else None
            if not isinstance(rtype, str):
                extractor.facts.notes.append(DataNote("skipped-resource", "not-a-resource", None))
                continue
            read = readers.get(rtype)
            if read is None:
                continue
            try:
                read(resource)
            except Unreadable as problem:
                extractor.note(problem.key, resource)
            except (TypeError, AttributeError, ValueError, KeyError):
                extractor.note("unexpected-type", resource)
        excluded = extractor.excluded
        for order in draft_orders:
            if reference_of(order) in excluded:
                continue
            try:
                if order.get("resourceType") in ("MedicationRequest", "MedicationOrder"):
                    extractor.medication(order, co_ordered=True)
                elif order.get("resourceType") == "ServiceRequest":
                    extractor.service({**order, "status": "draft"}
                                      if order.get("status") not in ("active", "draft") else order)
            except Unreadable as problem:
                extractor.note(problem.key, order)
            except (TypeError, AttributeError, ValueError, KeyError):
                extractor.note("unexpected-type", order)
        extractor.indication([o for o in orders if isinstance(o, Mapping)])
        return extractor.finish()


def extract(resources: Iterable[Any], terminology: Terminology, today: date, parameters: ClinicalParameters,
            draft_orders: Iterable[Any] = (), exclude_references: Iterable[str] = (),
            assertions: AssertionReader | None = None, orders: Iterable[Mapping[str, Any]] = ()) -> PatientFacts:
    """One-off extraction (tests, tools); the service keeps one ``FactReader``."""
    return FactReader(terminology, parameters, assertions).extract(resources, today, draft_orders,
                                                                   exclude_references, orders)
