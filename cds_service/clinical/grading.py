"""Reading one result: qualitative grade of an antibody result (codes, interpretation, wording,
value against the reference range), dates, numbers and status codes.  Pure."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds_service.clinical.dates import parse_date
from cds_service.terminology import as_list, canonical_system, codings, concept_texts

STRONG_FACTOR = 3.0

# Result answer codes (terminology note §5): SNOMED and LOINC answer list LL360-9.
ANSWER_CODES = {
    ("http://snomed.info/sct", "10828004"): "positive",
    ("http://snomed.info/sct", "260385009"): "negative",
    ("http://loinc.org", "LA6576-8"): "positive",
    ("http://loinc.org", "LA6577-6"): "negative",
}
# v3-ObservationInterpretation (terminology note §5).  HH/HU mean "above range", not "strong".
_INTERPRETATION = {
    "POS": "positive", "DET": "positive", "A": "positive", "AA": "positive", "H": "positive",
    "HH": "positive", "HU": "positive", ">": "positive",
    "NEG": "negative", "ND": "negative", "N": "negative", "L": "negative",
    "IND": "equivocal", "E": "equivocal",
    "WR": "weak-positive",  # weakly reactive
}
# Result wording as labs print it.  Parsing vocabulary, not clinical advice.
_STRONG_WORDS = re.compile(r"\b(strong(ly)?|high(ly)?|marked(ly)?)\s*(pos|positive|reactive)\b|\+\+\+")
_EQUIVOCAL_WORDS = re.compile(r"\b(equivocal|borderline|indeterminate|inconclusive)\b|\blow\s+positive\?|\+/-|\+-")
# Weak or low positive: the lab's own words, or a single "+" (a weak line-blot band).
_WEAK_WORDS = re.compile(r"\b(weak(ly)?|low|faint(ly)?)[\s-]*(pos|positive|reactive|band)\b|^\s*\(?\+\)?\s*$")
_NEGATIVE_WORDS = re.compile(r"\b(neg|negative|not\s+detected|non-?reactive|absent|none\s+detected|nd"
                             r"|no\s+(?:\w+\s+){0,2}detected|not\s+(?:reactive|positive|present)"
                             r"|no\s+(?:\w+\s+){0,2}(?:found|seen))\b|^\s*-\s*$")
_POSITIVE_WORDS = re.compile(r"\b(pos|positive|detected|reactive|present)\b|\+")
# The upper limit of normal in a range's text: "<20", "Negative: <20 U", "≤ 29", "0-19", "0 to 19".
_RANGE_TEXT = re.compile(r"(?:<=?|≤|less than|up to)\s*([0-9]+(?:\.[0-9]+)?)|"
                         r"(?<![0-9.])[0-9]+(?:\.[0-9]+)?\s*(?:-|–|to)\s*([0-9]+(?:\.[0-9]+)?)")


def grade_text(text: str) -> str | None:
    """Grade a lab's free-text result: strong-positive | positive | weak-positive | equivocal | negative | None."""
    if isinstance(text, str) and len(text) <= _CACHED_TEXT_CHARS:
        return _grade_text(text)
    return _grade_text.__wrapped__(text)


# Labs repeat a few wordings ("Positive", "Negative", "Strongly positive"): short ones are cached.
_CACHED_TEXT_CHARS = 200


@functools.lru_cache(maxsize=4096)
def _grade_text(text: str) -> str | None:
    low = text.strip().lower()
    if not low:
        return None
    if _STRONG_WORDS.search(low):
        return "strong-positive"
    if _EQUIVOCAL_WORDS.search(low):
        return "equivocal"
    if _WEAK_WORDS.search(low):
        return "weak-positive"
    if _NEGATIVE_WORDS.search(low):
        return "negative"
    if _POSITIVE_WORDS.search(low):
        return "positive"
    return None


# -- small readers ----------------------------------------------------------------------

def effective_date(resource: Mapping[str, Any]) -> date | None:
    for key in ("effectiveDateTime", "effectiveInstant", "issued"):
        found = parse_date(resource.get(key))
        if found:
            return found
    period = resource.get("effectivePeriod")
    if isinstance(period, Mapping):
        return parse_date(period.get("end")) or parse_date(period.get("start"))
    return None


def number(value: Any) -> float | None:
    """A finite number, or None: huge integers, "NaN" and "inf" (as strings) are not values."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def status_code(value: Any) -> str | None:
    """A status that may be a code string or a CodeableConcept (clinicalStatus)."""
    if isinstance(value, str):
        return value.strip().lower()
    for _, code, _ in codings(value):
        return code.strip().lower()
    if isinstance(value, Mapping) and isinstance(value.get("text"), str):
        return str(value["text"]).strip().lower()
    return None


class Unreadable(Exception):
    """A resource element could not be read; ``key`` names the reason in cards/_shared.yaml."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def reference_range(obs: Mapping[str, Any]) -> tuple[float | None, float | None]:
    for rng in as_list(obs.get("referenceRange")):
        if not isinstance(rng, Mapping):
            continue
        low = rng.get("low")
        high = rng.get("high")
        low_v = number(low.get("value")) if isinstance(low, Mapping) else None
        high_v = number(high.get("value")) if isinstance(high, Mapping) else None
        if high_v is None and isinstance(rng.get("text"), str):
            match = _RANGE_TEXT.search(rng["text"])
            if match:
                high_v = number(match.group(1) or match.group(2))
        if low_v is not None or high_v is not None:
            return low_v, high_v
    return None, None


def _interpretation_grade(obs: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(grade from interpretation codes/text, lab's own 'strong' wording present)."""
    grade: str | None = None
    strong = False
    for concept in as_list(obs.get("interpretation")):
        for _, code, _ in codings(concept):
            grade = grade or _INTERPRETATION.get(code.strip().upper())
        for text in concept_texts(concept):
            text_grade = grade_text(text)
            if text_grade == "strong-positive":
                strong = True
            grade = grade or ("positive" if text_grade == "strong-positive" else text_grade)
    return grade, strong


@dataclass(frozen=True)
class Graded:
    grade: str  # strong-positive | positive | weak-positive | equivocal | negative | unknown
    value_text: str


def grade_result(obs: Mapping[str, Any], answers: Mapping[tuple[str, str], str] | None = None) -> Graded:
    """Grade an antibody result from whichever encoding the lab used."""
    interp, interp_strong = _interpretation_grade(obs)
    if "valueQuantity" in obs:
        qty = obs["valueQuantity"]
        if not isinstance(qty, Mapping):
            raise Unreadable("unreadable-value")
        value = number(qty.get("value"))
        if value is None:
            raise Unreadable("unreadable-value")
        unit = qty.get("unit") or qty.get("code") or ""
        comparator = qty.get("comparator") if isinstance(qty.get("comparator"), str) else ""
        text = f"{comparator}{value:g} {unit}".strip()
        _, high = reference_range(obs)
        grade: str | None = None
        if high is not None and high > 0:
            above = value > high or (value == high and comparator in (">", ">="))
            below = value <= high and comparator not in (">", ">=")
            if above:
                grade = "strong-positive" if value >= STRONG_FACTOR * high else "positive"
            elif below:
                grade = "negative"
        if interp is not None:
            # The lab's own call wins on positive/negative/equivocal; the number grades strength.
            if interp == "positive":
                grade = "strong-positive" if (grade == "strong-positive" or interp_strong) else "positive"
            else:
                grade = interp
        return Graded(grade or "unknown", text)
    if "valueCodeableConcept" in obs:
        concept = obs["valueCodeableConcept"]
        value_grade: str | None = None
        for system, code, _ in codings(concept):
            value_grade = value_grade or (answers or ANSWER_CODES).get((canonical_system(system), code.strip()))
        texts = list(concept_texts(concept))
        text_grades = [g for g in (grade_text(t) for t in texts) if g]
        if value_grade is None and text_grades:
            value_grade = text_grades[0]
        if value_grade == "positive" and ("strong-positive" in text_grades or interp_strong):
            value_grade = "strong-positive"
        if value_grade is None and not texts and not list(codings(concept)):
            raise Unreadable("unreadable-value")
        grade = value_grade or interp
        if grade == "positive" and interp_strong:
            grade = "strong-positive"
        return Graded(grade or "unknown", texts[0] if texts else "")
    if "valueString" in obs:
        text = obs["valueString"]
        if not isinstance(text, str):
            raise Unreadable("unreadable-value")
        value_grade = grade_text(text)
        grade = value_grade or interp
        if grade == "positive" and interp_strong:
            grade = "strong-positive"
        return Graded(grade or "unknown", text[:80])
    if "valueBoolean" in obs and isinstance(obs["valueBoolean"], bool):
        return Graded("positive" if obs["valueBoolean"] else "negative", "")
    if interp is not None:
        return Graded("strong-positive" if interp == "positive" and interp_strong else interp, "")
    return Graded("unknown", "")
