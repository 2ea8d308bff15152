"""Value sets from ``cards/valuesets/``, compiled once into sets of (system, code) and alias runs.

Answers one question fast: "is this Coding (or this text) in value set X?".  Matching rules are
documented in ``cards/valuesets/README.md``: exact (system, code); ICD-10-CM ``is-a`` filters as
code prefixes; NDC compared as (labeler, product); text aliases as whole-token runs in normalised
text, vetoed by the set's exclude aliases.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXT_BASE = "https://ivig-cds.example.org/fhir/StructureDefinition/"
EXT_ALIAS = EXT_BASE + "text-alias"
EXT_ALIAS_EXCLUDE = EXT_BASE + "text-alias-exclude"
EXT_CONFIDENCE = EXT_BASE + "code-confidence"
EXT_SOURCE = EXT_BASE + "code-source"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NDC = "http://hl7.org/fhir/sid/ndc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

# Systems clients spell in more than one way; all are folded onto the canonical URI.
_SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "https://loinc.org": LOINC,
    "http://loinc.org/": LOINC,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "https://snomed.info/sct": SNOMED,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    # WHO ICD-10 shares ICD-10-CM's categories (M33.1, J84.1 …); clients often label CM codes with
    # it (the spec's own example does).  Only the value sets' is-a prefixes and exact codes apply.
    "http://hl7.org/fhir/sid/icd-10": ICD10CM,
    "http://hl7.org/fhir/sid/icd-10-us": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.69": NDC,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "http://www.nlm.nih.gov/research/umls/rxnorm/": RXNORM,
}

_NON_ALNUM = re.compile(r"[^0-9a-z]+")

# What ``concept_key`` makes of a concept: nested tuples of strings and None, hashable.
ConceptKey = tuple[Any, ...]

# Entries a concept cache (per value set, matcher or catalogue) keeps before it starts again from
# empty, and the characters a key may hold to be kept at all (see ``remember``).
CONCEPT_CACHE_LIMIT = 20_000
KEY_CHARS_LIMIT = 512


@functools.lru_cache(maxsize=8192)
def normalise_text(text: str) -> str:
    """Lower-case, every run of non-alphanumerics -> one space; padded for whole-token search.

    Cached: the same lab and drug names recur across calls.
    """
    return " " + _NON_ALNUM.sub(" ", text.lower()).strip() + " "


def alternation(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One regex finding any of the (normalised, space-padded) phrases as a whole-token run."""
    stripped = sorted({p.strip() for p in phrases if p.strip()}, key=len, reverse=True)
    if not stripped:
        return None
    return re.compile(" (?:" + "|".join(re.escape(p) for p in stripped) + ") ")


def canonical_system(system: str | None) -> str:
    if not system:
        return ""
    system = system.strip()
    return _SYSTEM_ALIASES.get(system, system)


def _icd_key(code: str) -> str:
    return code.replace(".", "").strip().upper()


def ndc_product(code: str) -> tuple[str, str] | None:
    """(labeler, product) of an NDC in any of the 10-digit hyphenated or 11-digit forms."""
    code = code.strip()
    parts = code.split("-")
    if len(parts) in (2, 3) and all(p.isdigit() for p in parts):
        return parts[0].zfill(5), parts[1].zfill(4)
    digits = code.replace(" ", "")
    if digits.isdigit() and len(digits) == 11:
        return digits[:5], digits[5:9]
    return None


@dataclass(frozen=True)
class Concept:
    system: str
    code: str
    display: str
    confidence: str
    source: str


@dataclass
class ValueSet:
    id: str
    url: str
    title: str
    version: str
    resource: dict[str, Any]
    concepts: list[Concept] = field(default_factory=list)
    codes: set[tuple[str, str]] = field(default_factory=set)
    icd_prefixes: tuple[str, ...] = ()
    ndc_products: set[tuple[str, str]] = field(default_factory=set)
    aliases: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    alias_pattern: re.Pattern[str] | None = None
    exclude_pattern: re.Pattern[str] | None = None
    # concept_key(concept) -> concept_matches answer; bounded, filled as concepts are seen.
    concept_cache: dict[ConceptKey, str | None] = field(default_factory=dict, repr=False, compare=False)

    # -- matching ---------------------------------------------------------------------
    def has_coding(self, system: str | None, code: str | None) -> bool:
        if not code or not isinstance(code, str):
            return False
        system = canonical_system(system)
        code = code.strip()
        if (system, code) in self.codes:
            return True
        if system == ICD10CM and self.icd_prefixes:
            key = _icd_key(code)
            return any(key.startswith(prefix) for prefix in self.icd_prefixes)
        if system == NDC and self.ndc_products:
            product = ndc_product(code)
            return product is not None and product in self.ndc_products
        return False

    def matches_text(self, text: str | None) -> bool:
        if not text or not isinstance(text, str) or self.alias_pattern is None:
            return False
        norm = normalise_text(text)
        if self.exclude_pattern is not None and self.exclude_pattern.search(norm):
            return False
        return self.alias_pattern.search(norm) is not None

    def excluded_by_text(self, text: str | None) -> bool:
        if not text or not isinstance(text, str) or self.exclude_pattern is None:
            return False
        return self.exclude_pattern.search(normalise_text(text)) is not None

    def search_tokens(self) -> list[str]:
        """``system|code`` tokens for a FHIR search (prefetch templates)."""
        return [f"{c.system}|{c.code}" for c in self.concepts]


def _extensions(obj: Mapping[str, Any], url: str) -> Iterator[Any]:
    for ext in obj.get("extension", []) or []:
        if isinstance(ext, Mapping) and ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    yield value


def compile_value_set(resource: dict[str, Any]) -> ValueSet:
    vs = ValueSet(
        id=str(resource["id"]),
        url=str(resource.get("url", "")),
        title=str(resource.get("title") or resource.get("name") or resource["id"]),
        version=str(resource.get("version", "")),
        resource=resource,
    )
    prefixes: list[str] = []
    for include in resource.get("compose", {}).get("include", []):
        system = canonical_system(include.get("system"))
        for concept in include.get("concept", []) or []:
            code = str(concept["code"]).strip()
            confidence = next(iter(_extensions(concept, EXT_CONFIDENCE)), "high")
            source = next(iter(_extensions(concept, EXT_SOURCE)), "")
            vs.concepts.append(Concept(system, code, str(concept.get("display", "")), str(confidence),
                                       str(source)))
            vs.codes.add((system, code))
            if system == NDC:
                product = ndc_product(code)
                if product:
                    vs.ndc_products.add(product)
        for flt in include.get("filter", []) or []:
            if system == ICD10CM and flt.get("op") in ("is-a", "descendent-of"):
                prefixes.append(_icd_key(str(flt.get("value", ""))))
    vs.icd_prefixes = tuple(p for p in prefixes if p)
    vs.aliases = tuple(sorted({normalise_text(a) for a in _extensions(resource, EXT_ALIAS)
                               if isinstance(a, str) and a.strip()}))
    vs.excludes = tuple(sorted({normalise_text(a) for a in _extensions(resource, EXT_ALIAS_EXCLUDE)
                                if isinstance(a, str) and a.strip()}))
    vs.alias_pattern = alternation(vs.aliases)
    vs.exclude_pattern = alternation(vs.excludes)
    return vs


class Terminology:
    """All value sets of a content directory, by id."""

    def __init__(self, value_sets: Iterable[ValueSet]) -> None:
        self.value_sets: dict[str, ValueSet] = {vs.id: vs for vs in value_sets}

    @classmethod
    def load(cls, directory: str | Path) -> Terminology:
        directory = Path(directory)
        sets = []
        for path in sorted(directory.glob("*.json")):
            with path.open(encoding="utf-8") as fh:
                sets.append(compile_value_set(json.load(fh)))
        return cls(sets)

    def __getitem__(self, vs_id: str) -> ValueSet:
        try:
            return self.value_sets[vs_id]
        except KeyError:
            raise KeyError(f"value set {vs_id!r} is not defined in cards/valuesets/") from None

    def __contains__(self, vs_id: object) -> bool:
        return vs_id in self.value_sets

    def ids(self, prefix: str = "") -> list[str]:
        return sorted(i for i in self.value_sets if i.startswith(prefix))

    def low_confidence(self) -> list[tuple[str, Concept]]:
        return [(vs.id, c) for vs in self.value_sets.values() for c in vs.concepts
                if c.confidence in ("low", "medium")]


# -- reading codes out of raw FHIR JSON (lenient: clients send invalid R4) -----------------

def as_list(value: Any) -> list[Any]:
    """A FHIR array that a client may have sent as a single object."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def codings(concept: Any) -> Iterator[tuple[str, str, str]]:
    """(system, code, display) of every well-formed Coding in a CodeableConcept (or list of them)."""
    for cc in as_list(concept):
        if not isinstance(cc, dict):
            continue
        for coding in as_list(cc.get("coding")):
            if isinstance(coding, dict):
                code = coding.get("code")
                if isinstance(code, str):
                    display = coding.get("display")
                    yield (str(coding.get("system") or ""), code,
                           display if isinstance(display, str) else "")


def concept_texts(concept: Any) -> Iterator[str]:
    """``text`` and every coding ``display`` of a CodeableConcept (or list of them)."""
    for cc in as_list(concept):
        if isinstance(cc, str):
            yield cc
            continue
        if not isinstance(cc, dict):
            continue
        text = cc.get("text")
        if isinstance(text, str):
            yield text
        for coding in as_list(cc.get("coding")):
            if isinstance(coding, dict):
                display = coding.get("display")
                if isinstance(display, str):
                    yield display


def concept_key(concept: Any) -> ConceptKey:
    """A hashable key holding everything ``codings`` and ``concept_texts`` read from a concept.

    Two concepts with the same key give the same codings and the same texts (in the same order), so
    any answer computed from those alone (``concept_matches``, ``Matcher.match``) can be cached on it.
    The key follows ``as_list``: one entry per element, a ``str`` for a bare string, and for a
    CodeableConcept a tuple of its ``text`` (None unless a string) and one (system as ``codings``
    reads it, code or None unless a string, display or None unless a string) per Coding object.
    Elements both readers skip (numbers, lists, …) leave nothing.
    """
    if concept.__class__ is dict:  # the usual shape, first
        return (_cc_key(concept),)
    parts: list[Any] = []
    for cc in as_list(concept):
        if isinstance(cc, str):
            parts.append(cc)
        elif isinstance(cc, dict):
            parts.append(_cc_key(cc))
    return tuple(parts)


def concepts_key(concepts: Iterable[Any]) -> ConceptKey:
    """The ``concept_key`` of each of several concepts (a medication's, say), in order."""
    return tuple(concept_key(c) for c in concepts)


def _cc_key(cc: dict[str, Any]) -> tuple[Any, ...]:
    text = cc.get("text")
    if text is not None and not isinstance(text, str):
        text = None
    coding = cc.get("coding")
    if coding.__class__ is list and len(coding) == 1 and coding[0].__class__ is dict:  # the usual shape
        item = coding[0]
        system, code, display = item.get("system"), item.get("code"), item.get("display")
        return (text, (system if system.__class__ is str else str(system or ""),
                       code if code.__class__ is str or isinstance(code, str) else None,
                       display if display.__class__ is str or isinstance(display, str) else None))
    return (text, *(_coding_key(item) for item in as_list(coding) if isinstance(item, dict)))


def _coding_key(coding: dict[str, Any]) -> tuple[str, str | None, str | None]:
    system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
    return (str(system or ""), code if isinstance(code, str) else None, display if isinstance(display, str) else None)


def remember(cache: dict[Any, Any], key: ConceptKey, value: Any) -> None:
    """Store in a bounded cache: past ``CONCEPT_CACHE_LIMIT`` entries it starts again from empty,
    and a key holding more than ``KEY_CHARS_LIMIT`` characters is not kept (its answer is computed
    each time), so what a client sends cannot make a cache hold much memory.  Plain dict
    operations: safe to share between threads under CPython."""
    if _key_chars(key) > KEY_CHARS_LIMIT:
        return
    if len(cache) >= CONCEPT_CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _key_chars(key: tuple[Any, ...]) -> int:
    return sum(len(part) if isinstance(part, str) else _key_chars(part) if isinstance(part, tuple) else 0
               for part in key)


def concept_matches(vs: ValueSet, concept: Any) -> str | None:
    """How a CodeableConcept matches: ``"code"``, ``"text"`` or None (cached on the value set).

    Code first; text aliases only when no coding of the concept is in the set.
    """
    key = concept_key(concept)
    try:
        return vs.concept_cache[key]
    except KeyError:
        found = concept_matches_uncached(vs, concept)
        remember(vs.concept_cache, key, found)
        return found


def concept_matches_uncached(vs: ValueSet, concept: Any) -> str | None:
    """``concept_matches`` computed afresh (what the cache holds)."""
    for system, code, _ in codings(concept):
        if vs.has_coding(system, code):
            return "code"
    for text in concept_texts(concept):
        if vs.matches_text(text):
            return "text"
    return None
