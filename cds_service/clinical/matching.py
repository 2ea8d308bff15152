"""Value sets compiled for fast filtering of raw resources: one dictionary look-up per coding,
one pre-compiled regex per text.  Built once per runtime (``FactReader``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.clinical.contract import Antibody, ConditionKey, LabKey, PftKey
from cds_service.clinical.grading import ANSWER_CODES
from cds_service.clinical.orders import ivig_by_concepts
from cds_service.clinical.safety_facts import SafetySets
from cds_service.terminology import (
    KEY_CHARS_LIMIT,
    ConceptKey,
    Terminology,
    ValueSet,
    alternation,
    canonical_system,
    codings,
    concept_key,
    concept_matches_uncached,
    concept_texts,
    normalise_text,
    remember,
)

ANTIBODIES: dict[str, str] = {a: a.value_set for a in Antibody}
# Other myositis antibodies (Mi-2, TIF1-gamma, SRP, …): no card is about them, but a result puts
# the patient "on record" for antibodies and a positive one in the clinical scope.
OTHER_ANTIBODIES = "other"
MATCHED_ANTIBODIES = {**ANTIBODIES, OTHER_ANTIBODIES: "antibody-other-myositis"}
CONDITIONS: dict[str, str] = {c: c.value_set for c in ConditionKey}
LABS: dict[str, str] = {lab: lab.value_set for lab in LabKey}
PFT_PERCENT: dict[str, str] = {p: p.value_set for p in PftKey}


class Matcher:
    """Value sets compiled for fast filtering of raw resources."""

    def __init__(self, terminology: Terminology, groups: Mapping[str, str]) -> None:
        self.sets: dict[str, ValueSet] = {name: terminology[vs_id] for name, vs_id in groups.items()
                                          if vs_id in terminology}
        self.by_code: dict[tuple[str, str], list[str]] = {}
        for name, vs in self.sets.items():
            for code in vs.codes:
                self.by_code.setdefault(code, []).append(name)
        self.any_alias = alternation(a for vs in self.sets.values() for a in vs.aliases)
        self._text_cache: dict[str, tuple[str, ...]] = {}
        self._match_cache: dict[ConceptKey, tuple[str, ...]] = {}
        self.text_only = frozenset(name for name, vs in self.sets.items()
                                   if not vs.codes and not vs.icd_prefixes and not vs.ndc_products)

    def match(self, concept: Any) -> tuple[str, ...]:
        """Names of the groups a CodeableConcept belongs to (cached on the concept's key).

        By code first; by alias text only for the groups no code matched — and, once any code
        identified the concept, only for groups that have no codes at all (e.g. "rapidly
        progressive", "antisynthetase syndrome"), whose only encoding is text.
        """
        key = concept_key(concept)
        try:
            return self._match_cache[key]
        except KeyError:
            found = self.match_uncached(concept)
            remember(self._match_cache, key, found)
            return found

    def match_uncached(self, concept: Any) -> tuple[str, ...]:
        """``match`` computed afresh (what the cache holds)."""
        names: list[str] = []
        for system, code, _ in codings(concept):
            hits = self.by_code.get((canonical_system(system), code.strip()))
            if hits:
                names.extend(h for h in hits if h not in names)
            else:
                for name, vs in self.sets.items():
                    if (vs.icd_prefixes or vs.ndc_products) and vs.has_coding(system, code) \
                            and name not in names:
                        names.append(name)
        if self.any_alias is None:
            return tuple(names)
        candidates = [name for name in self.sets if name not in names
                      and (not names or name in self.text_only)]
        if not candidates:
            return tuple(names)
        for text in concept_texts(concept):
            for name in self._text_groups(text):
                if name in candidates and name not in names:
                    names.append(name)
        return tuple(names)

    def _text_groups(self, text: str) -> tuple[str, ...]:
        """Groups whose aliases match ``text``; cached, since a record repeats a few lab names."""
        found = self._text_cache.get(text)
        if found is None:
            found = ()
            if self.any_alias is not None and self.any_alias.search(normalise_text(text)):
                found = tuple(name for name, vs in self.sets.items() if vs.matches_text(text))
            if len(text) <= KEY_CHARS_LIMIT:  # a long text is not kept (memory a client could fill)
                if len(self._text_cache) > 20_000:
                    self._text_cache.clear()
                self._text_cache[text] = found
        return found


@dataclass(frozen=True, slots=True)
class ObservationProfile:
    """What every reader of an Observation makes of its ``code``, computed once per distinct code."""

    antibodies: tuple[str, ...] = ()
    labs: tuple[str, ...] = ()  # only when no antibody matched
    pft: tuple[str, ...] = ()  # this and the two below only when no antibody or lab matched
    pft_any: tuple[str, ...] = ()
    pregnancy: str | None = None
    anti_iga: bool = False  # the safety reader's anti-IgA antibodies


@dataclass(frozen=True, slots=True)
class ConditionProfile:
    """What the readers of a Condition make of its ``code``."""

    hits: tuple[str, ...] = ()  # the condition groups
    anti_iga: bool = False
    allergen: bool = False  # hypersensitivity to immune globulin: allergen and reaction together


# A code no reader wants: the resource is skipped without reading anything else.
OBSERVATION_NOT_READ = ObservationProfile()
CONDITION_NOT_READ = ConditionProfile()


@dataclass
class Catalogue:
    """Per-terminology compiled matchers, built once and reused for every call.

    ``observation_profile``/``condition_profile`` answer every reader's question about a code at
    once, cached (bounded) on the code's ``concept_key``: a resource whose code no rule reads costs
    one key build and one dictionary look-up.  Medications likewise, on their concepts' keys.
    """

    antibodies: Matcher
    conditions: Matcher
    labs: Matcher
    pft: Matcher
    first_line: ValueSet
    methylprednisolone: ValueSet
    intravenous: ValueSet
    plasma_exchange: ValueSet
    answers: dict[tuple[str, str], str]
    terminology: Terminology
    glucocorticoid: ValueSet
    pregnancy_condition: ValueSet
    pregnancy_status: ValueSet
    pft_any: Matcher
    pft_order: ValueSet
    safety: SafetySets
    observation_cache: dict[ConceptKey, ObservationProfile] = field(default_factory=dict, repr=False, compare=False)
    condition_cache: dict[ConceptKey, ConditionProfile] = field(default_factory=dict, repr=False, compare=False)
    first_line_cache: dict[ConceptKey, bool] = field(default_factory=dict, repr=False, compare=False)
    ivig_cache: dict[ConceptKey, bool] = field(default_factory=dict, repr=False, compare=False)

    def observation_profile(self, code: Any) -> ObservationProfile:
        key = concept_key(code)
        try:
            return self.observation_cache[key]
        except KeyError:
            found = self._observation_profile(code)
            remember(self.observation_cache, key, found)
            return found

    def _observation_profile(self, code: Any) -> ObservationProfile:
        antibodies = self.antibodies.match_uncached(code)
        labs = () if antibodies else self.labs.match_uncached(code)
        more = not (antibodies or labs)
        profile = ObservationProfile(
            antibodies, labs,
            self.pft.match_uncached(code) if more else (),
            self.pft_any.match_uncached(code) if more else (),
            concept_matches_uncached(self.pregnancy_status, code) if more else None,
            isinstance(code, Mapping) and concept_matches_uncached(self.safety.anti_iga, code) is not None)
        return OBSERVATION_NOT_READ if profile == OBSERVATION_NOT_READ else profile

    def first_line_medication(self, concepts: list[Any], key: ConceptKey) -> bool:
        """Is any of a medication's concepts first-line therapy?  ``key``: ``concepts_key(concepts)``."""
        try:
            return self.first_line_cache[key]
        except KeyError:
            found = any(concept_matches_uncached(self.first_line, c) for c in concepts)
            remember(self.first_line_cache, key, found)
            return found

    def ivig_medication(self, concepts: list[Any], key: ConceptKey) -> bool:
        """``orders.ivig_by_concepts`` (IVIG before its route is looked at), cached the same way."""
        try:
            return self.ivig_cache[key]
        except KeyError:
            found = ivig_by_concepts(concepts, self.terminology)
            remember(self.ivig_cache, key, found)
            return found

    def condition_profile(self, code: Any) -> ConditionProfile:
        key = concept_key(code)
        try:
            return self.condition_cache[key]
        except KeyError:
            profile = ConditionProfile(
                self.conditions.match_uncached(code),
                concept_matches_uncached(self.safety.anti_iga, code) is not None,
                concept_matches_uncached(self.safety.allergen, code) is not None
                and concept_matches_uncached(self.safety.reaction, code) is not None)
            found = CONDITION_NOT_READ if profile == CONDITION_NOT_READ else profile
            remember(self.condition_cache, key, found)
            return found


def compile_catalogue(terminology: Terminology) -> Catalogue:
    return Catalogue(
        antibodies=Matcher(terminology, MATCHED_ANTIBODIES),
        conditions=Matcher(terminology, CONDITIONS),
        labs=Matcher(terminology, LABS),
        pft=Matcher(terminology, PFT_PERCENT),
        first_line=terminology["medication-first-line"],
        methylprednisolone=terminology["medication-methylprednisolone"],
        intravenous=terminology["route-intravenous"],
        plasma_exchange=terminology["procedure-plasma-exchange"],
        answers=_answer_codes(terminology),
        terminology=terminology,
        glucocorticoid=terminology["medication-glucocorticoid"],
        pregnancy_condition=terminology[ConditionKey.PREGNANCY.value_set],
        pregnancy_status=terminology["observation-pregnancy-status"],
        pft_any=Matcher(terminology, {**PFT_PERCENT, "fvc": "lab-fvc", "dlco": "lab-dlco"}),
        pft_order=terminology["procedure-pft"],
        safety=SafetySets.from_terminology(terminology),
    )


def _answer_codes(terminology: Terminology) -> dict[tuple[str, str], str]:
    """Qualitative answer codes -> grade, from the answer-* value sets (the note's codes otherwise)."""
    answers = dict(ANSWER_CODES)
    for vs_id, grade in (("answer-positive", "positive"), ("answer-negative", "negative")):
        if vs_id in terminology:
            for system, code in terminology[vs_id].codes:
                answers[(system, code)] = grade
    return answers
