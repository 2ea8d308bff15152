"""Value sets compiled for fast filtering of raw resources: one dictionary look-up per coding,
one pre-compiled regex per text.  Built once per runtime (``FactReader``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cds_service.clinical.contract import Antibody, ConditionKey, LabKey, PftKey
from cds_service.clinical.grading import ANSWER_CODES
from cds_service.clinical.safety_facts import SafetySets
from cds_service.terminology import (
    Terminology,
    ValueSet,
    alternation,
    canonical_system,
    codings,
    concept_texts,
    normalise_text,
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
        self.text_only = frozenset(name for name, vs in self.sets.items()
                                   if not vs.codes and not vs.icd_prefixes and not vs.ndc_products)

    def match(self, concept: Any) -> list[str]:
        """Names of the groups a CodeableConcept belongs to.

        By code first; by alias text only for the groups no code matched — and, once any code
        identified the concept, only for groups that have no codes at all (e.g. "rapidly
        progressive", "antisynthetase syndrome"), whose only encoding is text.
        """
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
            return names
        candidates = [name for name in self.sets if name not in names
                      and (not names or name in self.text_only)]
        if not candidates:
            return names
        for text in concept_texts(concept):
            for name in self._text_groups(text):
                if name in candidates and name not in names:
                    names.append(name)
        return names

    def _text_groups(self, text: str) -> tuple[str, ...]:
        """Groups whose aliases match ``text``; cached, since a record repeats a few lab names."""
        found = self._text_cache.get(text)
        if found is None:
            found = ()
            if self.any_alias is not None and self.any_alias.search(normalise_text(text)):
                found = tuple(name for name, vs in self.sets.items() if vs.matches_text(text))
            if len(self._text_cache) > 20_000:
                self._text_cache.clear()
            self._text_cache[text] = found
        return found


@dataclass
class Catalogue:
    """Per-terminology compiled matchers, built once and reused for every call."""

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
