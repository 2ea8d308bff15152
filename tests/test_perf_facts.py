"""Facts over a large prefetch (issue 16 item 3): the code caches answer exactly what the uncached
readers answer, for every concept shape clients send, and stay bounded.

Each cache is keyed on ``terminology.concept_key``; a reader built while ``remember`` stores nothing
computes every answer afresh, which is the reference the cached readers are held to.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cds_service import terminology
from cds_service.clinical import grading, matching
from cds_service.clinical.facts import FactReader, PatientFacts, extract
from cds_service.clinical.matching import OBSERVATION_NOT_READ, Catalogue, Matcher, compile_catalogue
from cds_service.clinical.orders import ivig_orders
from cds_service.devtools.fixtures import list_fixtures, load_fixture, record_resources
from cds_service.engine.assertion import assertion_reader
from cds_service.engine.content.parameters import load_parameters
from cds_service.settings import DEFAULT_CARDS_DIR
from cds_service.terminology import (
    CONCEPT_CACHE_LIMIT,
    ICD10CM,
    NDC,
    Terminology,
    codings,
    concept_key,
    concept_matches,
    concept_matches_uncached,
    concept_texts,
)

CARDS = Path(DEFAULT_CARDS_DIR)
T = Terminology.load(CARDS / "valuesets")
PARAMETERS = load_parameters(CARDS)
ASSERTIONS = assertion_reader(CARDS / "assertion-cues.yaml")
TODAY = date(2026, 11, 22)
LOCAL = "https://lab.example.org/codes"
LOINC = terminology.LOINC


def _no_store(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """``remember`` that keeps nothing: every answer is computed afresh."""


def _spellings(system: str) -> list[str]:
    """The system as sent: canonical, each alias clients use, and missing."""
    return [system, *(a for a, canonical in terminology._SYSTEM_ALIASES.items() if canonical == system), ""]


def _from_value_sets() -> Iterator[Any]:
    for vs in T.value_sets.values():
        for concept in vs.concepts[:3]:
            coding = {"system": concept.system, "code": concept.code, "display": concept.display}
            for system in _spellings(concept.system):
                yield {"coding": [{**coding, "system": system}]}
            yield {"coding": coding}  # a single Coding instead of a list
            yield {"coding": [{"code": concept.code}]}  # no system
            yield {"coding": [{"system": concept.system, "code": f" {concept.code} "}], "text": "result"}
            yield {"coding": [{"system": concept.system, "code": 7, "display": concept.display}]}  # code not a string
            yield {"coding": [{"system": LOCAL, "code": "X1", "display": concept.display}]}  # display only
            yield [{"text": "unrelated"}, {"coding": [coding]}]  # a list of CodeableConcepts
        for prefix in vs.icd_prefixes:
            code = f"{prefix[:3]}.{prefix[3:]}9"
            for system in _spellings(ICD10CM):
                yield {"coding": [{"system": system, "code": code}]}
            yield {"coding": [{"system": ICD10CM, "code": prefix.lower()}]}
        for labeler, product in sorted(vs.ndc_products)[:3]:
            for code in (f"{labeler}-{product}-01", f"{labeler}{product}01", f"{labeler.lstrip('0')}-{product}",
                         f"{labeler}-{product[:-1]}"):
                yield {"coding": [{"system": NDC, "code": code, "display": "immune globulin"}]}
                yield {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.69", "code": code}]}
        for alias in vs.aliases[:4]:
            text = alias.strip()
            yield {"text": text}
            yield {"text": f"No {text} (family history)"}
            yield text  # a bare string where a concept belongs
            yield {"coding": [{"system": LOCAL, "code": "L", "display": text.upper()}]}
            yield {"coding": [{"system": LOCAL, "code": "L"}], "text": f"{text}, rapidly progressive"}
            for exclude in vs.excludes[:2]:
                yield {"text": f"{text} {exclude.strip()}"}


ODD_SHAPES: list[Any] = [
    None, 5, "", [], {}, {"coding": None}, {"coding": "abc"}, {"coding": [None, 1, "x", []]}, {"text": 5},
    {"text": ["interstitial lung disease"]}, {"text": None, "coding": [{"system": None, "code": "33772-5"}]},
    [[{"coding": [{"system": LOINC, "code": "33772-5"}]}]],  # nested list: both readers skip it
    {"coding": [{"system": 5, "code": "33772-5"}]}, {"coding": [{"system": {"a": 1}, "code": "2160-0"}]},
    {"coding": [{"system": LOINC, "code": "33772-5", "display": 3}]},
    {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin [Mass/volume] in Blood"}],
     "text": "Hemoglobin"},
    {"coding": [{"system": LOINC, "code": "718-7"}, {"system": LOINC, "code": "33772-5"}]},
    {"coding": [{"system": LOINC, "code": "33772-5"}], "text": "Jo-1 antibody"},
    ["interstitial lung disease", {"text": "myositis"}],
]


def varied_concepts() -> list[Any]:
    return [*_from_value_sets(), *ODD_SHAPES]


CONCEPTS = varied_concepts()


def test_equal_keys_mean_equal_codings_and_texts() -> None:
    """The key holds everything the matchers read: concepts sharing a key read alike."""
    read: dict[Any, tuple[list[Any], list[str]]] = {}
    for concept in CONCEPTS + copy.deepcopy(CONCEPTS):
        key = concept_key(concept)
        hash(key)
        seen = (list(codings(concept)), list(concept_texts(concept)))
        assert read.setdefault(key, seen) == seen, concept
    assert len(read) > 300  # the set is varied: most concepts have a key of their own


def test_value_set_answers_cached_equal_uncached() -> None:
    t = Terminology.load(CARDS / "valuesets")  # fresh caches
    for vs in t.value_sets.values():
        for concept in CONCEPTS:
            expected = concept_matches_uncached(vs, concept)
            assert concept_matches(vs, concept) == expected, (vs.id, concept)
            assert concept_matches(vs, copy.deepcopy(concept)) == expected, (vs.id, concept)  # cache hit
    assert any(vs.concept_cache for vs in t.value_sets.values())


def _matchers(catalogue: Catalogue) -> dict[str, Matcher]:
    return {name: m for name, m in vars(catalogue).items() if isinstance(m, Matcher)}


def test_matcher_and_profiles_cached_equal_uncached() -> None:
    catalogue = compile_catalogue(T)
    for concept in CONCEPTS * 2:  # the second round answers from the caches
        for name, matcher in _matchers(catalogue).items():
            assert matcher.match(concept) == matcher.match_uncached(concept), (name, concept)
        assert catalogue.observation_profile(concept) == catalogue._observation_profile(concept), concept
        profile = catalogue.condition_profile(concept)
        assert profile.hits == catalogue.conditions.match_uncached(concept)
        assert profile.anti_iga == (concept_matches_uncached(catalogue.safety.anti_iga, concept) is not None)


def test_a_concept_changed_in_place_is_read_anew() -> None:
    """Keys are values, not identities: the same dict edited between calls gets a new answer."""
    catalogue = compile_catalogue(T)
    code: dict[str, Any] = {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}]}
    assert catalogue.observation_profile(code) is OBSERVATION_NOT_READ
    code["coding"][0]["code"] = "33772-5"  # PL-7
    assert catalogue.observation_profile(code).antibodies == ("pl7",)
    code["coding"][0]["code"] = "718-7"
    code["text"] = "Jo-1 antibody"
    assert catalogue.observation_profile(code) == catalogue._observation_profile(code)


# -- whole extraction: cached readers against a reader that caches nothing -----------------------

def _resources(concept: Any, n: int) -> list[dict[str, Any]]:
    """Every place a concept is read: Observation code, component and value, Condition, medication,
    allergy, service; statuses that let each reader go on to read the rest."""
    when = "2026-11-01"
    return [
        {"resourceType": "Observation", "id": f"o{n}", "status": "final", "code": concept,
         "effectiveDateTime": when, "valueString": "Positive", "interpretation": [{"text": "high"}]},
        {"resourceType": "Observation", "id": f"q{n}", "status": "final", "code": concept, "effectiveDateTime": when,
         "valueQuantity": {"value": 42, "unit": "%"}, "component": [{"code": concept, "valueString": "weak +"}]},
        {"resourceType": "Observation", "id": f"p{n}", "status": "final", "effectiveDateTime": when,
         "code": {"coding": [{"system": LOINC, "code": "82810-3"}]}, "valueCodeableConcept": concept},
        {"resourceType": "Condition", "id": f"c{n}", "code": concept, "onsetDateTime": when},
        {"resourceType": "MedicationRequest", "id": f"m{n}", "status": "active", "intent": "order",
         "authoredOn": when, "medicationCodeableConcept": concept},
        {"resourceType": "MedicationStatement", "id": f"s{n}", "status": "active", "effectiveDateTime": when,
         "medicationReference": {"reference": f"#med{n}", "display": "home medication"},
         "contained": [{"resourceType": "Medication", "id": f"med{n}", "code": concept}]},
        {"resourceType": "AllergyIntolerance", "id": f"a{n}", "code": concept},
        {"resourceType": "Procedure", "id": f"x{n}", "status": "in-progress", "code": concept},
    ]


def _generated_record() -> list[Any]:
    return [r for n, concept in enumerate(CONCEPTS) for r in _resources(concept, n)]


def _fixture_calls() -> Iterator[tuple[str, list[Any], list[Any], date]]:
    for name in list_fixtures():
        fixture = load_fixture(name)
        resources = record_resources(fixture) + list(fixture.get("invalidResources") or [])
        entries = (fixture.get("draftOrders") or {}).get("entry") or []
        drafts = [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        yield name, resources, drafts, date.fromisoformat(fixture["today"])
    yield "generated", _generated_record(), [], TODAY


CALLS = list(_fixture_calls())


def _extract(reader: FactReader, resources: list[Any], drafts: list[Any], today: date) -> PatientFacts:
    orders = ivig_orders("order-sign", drafts, [], T)
    return reader.extract(copy.deepcopy(resources), today, draft_orders=drafts,
                          exclude_references=[o.reference for o in orders], orders=[o.resource for o in orders])


@pytest.fixture(scope="module")
def uncached_facts() -> dict[str, str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(terminology, "remember", _no_store)
        patch.setattr(matching, "remember", _no_store)
        fresh = Terminology.load(CARDS / "valuesets")
        reader = FactReader(fresh, PARAMETERS, ASSERTIONS)
        found = {name: repr(_extract(reader, resources, drafts, today)) for name, resources, drafts, today in CALLS}
        assert not any(vs.concept_cache for vs in fresh.value_sets.values())
        return found


@pytest.mark.parametrize("call", CALLS, ids=[c[0] for c in CALLS])
def test_extract_cached_equals_uncached(call: tuple[str, list[Any], list[Any], date],
                                        uncached_facts: dict[str, str]) -> None:
    name, resources, drafts, today = call
    reader = FactReader(Terminology.load(CARDS / "valuesets"), PARAMETERS, ASSERTIONS)
    cold = repr(_extract(reader, resources, drafts, today))
    warm = repr(_extract(reader, resources, drafts, today))  # every code now answered from a cache
    assert cold == warm == uncached_facts[name]


def test_shared_reader_across_patients_equals_uncached(uncached_facts: dict[str, str]) -> None:
    """One runtime's reader serves every call: caches filled by one patient answer for the next."""
    reader = FactReader(T, PARAMETERS, ASSERTIONS)
    for name, resources, drafts, today in itertools.chain(CALLS, reversed(CALLS)):
        assert repr(_extract(reader, resources, drafts, today)) == uncached_facts[name], name


def test_module_extract_agrees_with_the_reader() -> None:
    resources = _generated_record()
    assert repr(extract(copy.deepcopy(resources), T, TODAY, PARAMETERS, assertions=ASSERTIONS)) == \
        repr(FactReader(T, PARAMETERS, ASSERTIONS).extract(copy.deepcopy(resources), TODAY))


# -- cost and bounds -------------------------------------------------------------------------------

def _routine_lab(n: int, code: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": f"lab{n}", "status": "final", "effectiveDateTime": "2026-11-01",
            "code": {"coding": [{"system": LOINC, "code": code, "display": f"Routine test {code}"}],
                     "text": f"Routine test {code}"},
            "valueQuantity": {"value": 4.2, "unit": "mmol/L"}}


def test_routine_results_cost_one_profile_entry_per_code() -> None:
    """2,000 routine results of 20 kinds: one profile each, and nothing else cached or read."""
    reader = FactReader(Terminology.load(CARDS / "valuesets"), PARAMETERS, ASSERTIONS)
    labs = [_routine_lab(n, f"9{n % 20:03d}-0") for n in range(2000)]
    facts = reader.extract(labs, TODAY)
    catalogue = reader._catalogue
    assert len(catalogue.observation_cache) == 20
    assert all(p is OBSERVATION_NOT_READ for p in catalogue.observation_cache.values())
    assert not any(m._match_cache for m in _matchers(catalogue).values())
    assert not any(vs.concept_cache for vs in catalogue.terminology.value_sets.values())
    assert not facts.labs and not facts.antibodies and not facts.notes


def test_profile_cache_stays_bounded() -> None:
    reader = FactReader(Terminology.load(CARDS / "valuesets"), PARAMETERS, ASSERTIONS)
    labs = [_routine_lab(n, f"{n}-1") for n in range(CONCEPT_CACHE_LIMIT + 50)]
    reader.extract(labs, TODAY)
    cache = reader._catalogue.observation_cache
    assert 0 < len(cache) <= CONCEPT_CACHE_LIMIT
    assert reader.extract(labs[:3], TODAY).notes == []  # still answers after starting again


def test_value_set_and_matcher_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminology, "CONCEPT_CACHE_LIMIT", 100)
    t = Terminology.load(CARDS / "valuesets")
    catalogue = compile_catalogue(t)
    vs = t["antibody-jo1"]
    for n in range(1000):
        concept = {"coding": [{"system": LOINC, "code": f"{n}-5"}], "text": f"test {n}"}
        assert concept_matches(vs, concept) is None
        assert catalogue.conditions.match(concept) == ()
        assert len(vs.concept_cache) <= 100 and len(catalogue.conditions._match_cache) <= 100
    jo1 = {"coding": [{"system": LOINC, "code": vs.concepts[0].code}]}
    assert concept_matches(vs, jo1) == "code" and concept_matches(vs, jo1) == "code"


def test_a_long_concept_is_answered_but_not_kept() -> None:
    """A key holding more than KEY_CHARS_LIMIT characters is not cached: clients cannot fill memory."""
    t = Terminology.load(CARDS / "valuesets")
    catalogue = compile_catalogue(t)
    vs = t["condition-ild"]
    concept = {"text": f"{vs.aliases[0].strip()} {'x' * terminology.KEY_CHARS_LIMIT}"}
    assert concept_matches(vs, concept) == concept_matches_uncached(vs, concept) == "text"
    assert concept_matches(vs, concept) == "text"
    assert catalogue.conditions.match(concept) == catalogue.conditions.match_uncached(concept) == ("ild",)
    assert catalogue.condition_profile(concept).hits == ("ild",)
    assert not vs.concept_cache and not catalogue.condition_cache and not catalogue.conditions._text_cache


@pytest.mark.parametrize("text", ["Positive", "positive", "Strongly positive", "weak +", "+", "-", "Negative",
                                  "not detected", "Equivocal", "1:160", "", "  ", "high " * 100])
def test_result_wording_cached_equals_uncached(text: str) -> None:
    assert grading.grade_text(text) == grading._grade_text.__wrapped__(text)
    assert grading.grade_text(text) == grading._grade_text.__wrapped__(text)  # from the cache
