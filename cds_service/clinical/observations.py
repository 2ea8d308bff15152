"""Reading Observations into patient facts (antibodies, labs, pulmonary function, pregnancy status).
Pure; part of ``facts._Extractor``.

Each Observation's code is looked up once in ``Catalogue.observation_profile`` (cached on the code's
key), so one that no rule reads costs a key build and a dictionary look-up, and allocates nothing
else.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from cds_service.clinical.assertion import Assertion, AssertionReader
from cds_service.clinical.contract import LabKey, PftKey
from cds_service.clinical.grading import Unreadable, effective_date, grade_result, number, reference_range
from cds_service.clinical.matching import OBSERVATION_NOT_READ, OTHER_ANTIBODIES, Catalogue, ObservationProfile
from cds_service.clinical.measures import as_kilograms
from cds_service.clinical.orders import reference_of
from cds_service.clinical.patient import AntibodyResult, LabValue, PatientFacts
from cds_service.clinical.safety_facts import SafetyReader
from cds_service.terminology import as_list, codings, concept_matches, concept_texts

FINAL_STATUSES = {"final", "amended", "corrected"}


def newer(candidate_date: date | None, current_date: date | None) -> bool:
    if current_date is None:
        return True
    return candidate_date is not None and candidate_date >= current_date


class ObservationReader:
    """The Observation half of ``facts._Extractor`` (which sets these attributes)."""

    cat: Catalogue
    facts: PatientFacts
    safety: SafetyReader
    assertions: AssertionReader
    fvc_series: list[tuple[date, float, str]]
    pregnancy_status: tuple[date, bool, str] | None

    # -- observations -------------------------------------------------------------------
    def observation(self, obs: Mapping[str, Any]) -> None:
        """An Observation, and its safety facts.  One whose code no rule reads (and that has no
        components) costs one key build and one look-up (``Catalogue.observation_profile``)."""
        code = obs.get("code")
        if code is not None and code.__class__ is not dict and not isinstance(code, Mapping):
            raise Unreadable("unreadable-code")
        profile = self.cat.observation_profile(code)
        components = obs.get("component")
        if profile is OBSERVATION_NOT_READ and not components:
            return  # not an observation any rule reads
        self._observation(obs, profile, components)
        self.safety.observation(obs, profile.anti_iga)

    def _observation(self, obs: Mapping[str, Any], profile: ObservationProfile, components: Any) -> None:
        antibody_hits, lab_hits, pft_hits, pft_any = profile.antibodies, profile.labs, profile.pft, profile.pft_any
        component_hits: list[tuple[Mapping[str, Any], tuple[str, ...], tuple[str, ...]]] = []
        for component in as_list(components):
            if isinstance(component, Mapping):
                c_code = component.get("code")
                c_antibodies = self.cat.antibodies.match(c_code)
                c_pft = () if c_antibodies else self.cat.pft.match(c_code)
                if c_antibodies or c_pft:
                    component_hits.append((component, c_antibodies, c_pft))
        pregnancy = profile.pregnancy
        if not (antibody_hits or lab_hits or pft_hits or component_hits or pft_any or pregnancy):
            return  # not an observation any rule reads
        status = obs.get("status")
        if not isinstance(status, str):
            raise Unreadable("unreadable-status")
        if status not in FINAL_STATUSES:
            return
        when = effective_date(obs)
        ref = reference_of(obs)
        if (pft_hits or pft_any or any(c_pft for _, _, c_pft in component_hits)) and when is not None:
            self.facts.pft_dates.append(when)
        if pregnancy and when is not None:
            self._pregnancy_status(obs, when, ref)
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
        if current is None or newer(when, current.date):
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
            lab = as_kilograms(lab)
            if lab is None:
                raise Unreadable("unreadable-value")
        current = self.facts.labs.get(name)
        if current is None or newer(when, current.date):
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
        if current is None or newer(when, current.date):
            self.facts.pft[name] = lab

    def _pregnancy_status(self, obs: Mapping[str, Any], when: date, ref: str) -> None:
        if self.pregnancy_status is not None and self.pregnancy_status[0] > when:
            return  # the newest pregnancy status wins
        value = obs.get("valueCodeableConcept")
        positive = concept_matches(self.cat.pregnancy_condition, value) is not None if value is not None else False
        if positive and value is not None:
            text = next(iter(concept_texts(value)), "")
            positive = self.assertions.assertion(text, self.cat.pregnancy_condition.aliases) is Assertion.AFFIRMED \
                if text else True
        self.pregnancy_status = (when, positive, ref)
