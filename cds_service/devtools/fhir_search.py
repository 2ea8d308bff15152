"""An in-memory FHIR REST search over a plain list of resource dicts: what a small FHIR server answers.

``search(resources, "Observation?patient=p&code=...")`` fills prefetch exactly as a client fills it;
the test FHIR server (``tests/fhir_server.py``), the request builder (``fixtures.py``), ``fire`` and
the benchmarks use it.  No HTTP here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

JsonDict = dict[str, Any]
Predicate = Callable[[JsonDict], bool]

# Where each resource type keeps the date that ``_sort=date`` orders by (first present wins).
_SORT_DATE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Observation": (("effectiveDateTime",), ("effectivePeriod", "start"), ("effectiveInstant",),
                    ("issued",)),
    "Condition": (("recordedDate",), ("onsetDateTime",), ("onsetPeriod", "start")),
    "MedicationRequest": (("authoredOn",),),
    "MedicationStatement": (("effectiveDateTime",), ("effectivePeriod", "start"), ("dateAsserted",)),
    "Procedure": (("performedDateTime",), ("performedPeriod", "start")),
    "ServiceRequest": (("authoredOn",), ("occurrenceDateTime",), ("occurrencePeriod", "start")),
    "DiagnosticReport": (("effectiveDateTime",), ("effectivePeriod", "start"), ("issued",)),
    "Encounter": (("period", "start"),),
}

_RESOURCE_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]+$")

# FHIR date / dateTime / instant: YYYY, YYYY-MM, YYYY-MM-DD, optionally Thh:mm[:ss[.fff]][Z|±hh:mm].
FHIR_DATE_RE = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2}))?)?"
    r"(?P<time>T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?$"
)


def search(resources: Sequence[Any], relative_url: str, *, base_url: str | None = None) -> JsonDict | None:
    """Answer a FHIR read (``Type/id``) or search (``Type?params``) over ``resources``.

    A read returns the resource, or None when there is none.  A search returns a ``searchset`` Bundle
    whose entries share the resource dicts given (copy them before mutating).  Supported parameters:
    ``patient``/``subject`` (``Patient/<id>`` or bare id), ``_id``, ``code`` (token; for Observations also
    ``component.code``), ``category``, ``status`` (comma = OR in each), ``_sort`` (``date`` / ``-date``),
    ``_count`` and ``_offset`` (paging, with a ``next`` link).  Repeated parameters are ANDed; unknown
    parameters and parameters with modifiers are ignored.  ``base_url`` makes ``fullUrl`` and links
    absolute.  One pass over ``resources`` (plus the sort of the matches).
    """
    path, _, query = relative_url.strip().partition("?")
    # Absolute URLs work too: only the last one or two path segments matter.
    segments = [s for s in path.split("/") if s]
    if len(segments) >= 2 and _RESOURCE_TYPE_RE.match(segments[-2]):
        return _read(resources, segments[-2], segments[-1])
    if not segments or not _RESOURCE_TYPE_RE.match(segments[-1]):
        raise ValueError(f"not a FHIR read or search URL: {relative_url!r}")
    return _search(resources, segments[-1], parse_qsl(query, keep_blank_values=True), base_url)


def _read(resources: Iterable[Any], resource_type: str, resource_id: str) -> JsonDict | None:
    for resource in resources:
        if (isinstance(resource, dict) and resource.get("resourceType") == resource_type
                and resource.get("id") == resource_id):
            return resource
    return None


def _search(resources: Sequence[Any], resource_type: str, params: list[tuple[str, str]],
            base_url: str | None) -> JsonDict:
    predicates: list[Predicate] = []
    count: int | None = None
    offset = 0
    sort_descending: bool | None = None
    for name, value in params:
        if name in ("patient", "subject"):
            predicates.append(_reference_predicate(value))
        elif name == "_id":
            predicates.append(_field_in("id", value))
        elif name == "code":
            predicates.append(_code_predicate(value, with_components=resource_type == "Observation"))
        elif name == "category":
            predicates.append(_category_predicate(value))
        elif name == "status":
            predicates.append(_field_in("status", value))
        elif name == "_count":
            count = _non_negative_int(value, count)
        elif name == "_offset":
            offset = _non_negative_int(value, offset) or 0
        elif name == "_sort":
            for field in value.split(","):
                if field.strip().lstrip("-") == "date":
                    sort_descending = field.strip().startswith("-")
                    break

    matches = [
        r for r in resources
        if isinstance(r, dict) and r.get("resourceType") == resource_type and all(p(r) for p in predicates)
    ]
    if sort_descending is not None:
        matches.sort(key=_sort_key(resource_type, sort_descending))

    page = matches[offset:] if count is None else matches[offset: offset + count]
    prefix = "" if base_url is None else base_url.rstrip("/") + "/"
    bundle: JsonDict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches),
        "link": [{"relation": "self", "url": prefix + _search_url(resource_type, params, None)}],
        "entry": [
            {"fullUrl": f"{prefix}{resource_type}/{r.get('id')}", "resource": r, "search": {"mode": "match"}}
            for r in page
        ],
    }
    if count is not None and count > 0 and offset + count < len(matches):
        bundle["link"].append(
            {"relation": "next", "url": prefix + _search_url(resource_type, params, offset + count)}
        )
    return bundle


def _search_url(resource_type: str, params: list[tuple[str, str]], offset: int | None) -> str:
    kept = [(n, v) for n, v in params if n != "_offset"]
    if offset is not None:
        kept.append(("_offset", str(offset)))
    if not kept:
        return resource_type
    return resource_type + "?" + "&".join(
        f"{quote(n, safe='_:-.')}={quote(v, safe='|,:-._/')}" for n, v in kept
    )


def _non_negative_int(value: str, default: int | None) -> int | None:
    try:
        number = int(value)
    except ValueError:
        return default
    return number if number >= 0 else default


def _field_in(field: str, value: str) -> Predicate:
    allowed = frozenset(v for v in value.split(",") if v)

    def matches(resource: JsonDict) -> bool:
        return resource.get(field) in allowed

    return matches


def _reference_key(reference: str) -> str:
    """``Patient/x``, ``https://host/fhir/Patient/x`` and bare ``x`` all become ``Patient/x``."""
    parts = [p for p in reference.split("/") if p]
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return f"Patient/{reference}"


def _reference_predicate(value: str) -> Predicate:
    wanted = frozenset(_reference_key(v) for v in value.split(",") if v)

    def matches(resource: JsonDict) -> bool:
        for field in ("subject", "patient"):
            ref = resource.get(field)
            reference = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(reference, str) and _reference_key(reference) in wanted:
                return True
        return False

    return matches


class _TokenSet:
    """Parsed token search values (comma = OR): ``system|code``, ``|code``, ``system|``, ``code``."""

    def __init__(self, value: str) -> None:
        self.pairs: set[tuple[str, str]] = set()
        self.bare_codes: set[str] = set()
        self.systems: set[str] = set()
        self.no_system_codes: set[str] = set()
        for token in value.split(","):
            if not token:
                continue
            if "|" in token:
                system, code = token.split("|", 1)
                if not system:
                    self.no_system_codes.add(code)
                elif not code:
                    self.systems.add(system)
                else:
                    self.pairs.add((system, code))
            else:
                self.bare_codes.add(token)

    def matches_concept(self, concept: Any) -> bool:
        if not isinstance(concept, dict):
            return False
        codings = concept.get("coding")
        if not isinstance(codings, list):
            return False
        for coding in codings:
            if not isinstance(coding, dict):
                continue
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(code, str):
                if isinstance(system, str) and system in self.systems:
                    return True
                continue
            if code in self.bare_codes:
                return True
            if isinstance(system, str):
                if (system, code) in self.pairs or system in self.systems:
                    return True
            elif code in self.no_system_codes:
                return True
        return False


def _code_predicate(value: str, *, with_components: bool) -> Predicate:
    tokens = _TokenSet(value)

    def matches(resource: JsonDict) -> bool:
        if tokens.matches_concept(resource.get("code")):
            return True
        if with_components:
            components = resource.get("component")
            if isinstance(components, list):
                return any(isinstance(c, dict) and tokens.matches_concept(c.get("code")) for c in components)
        return False

    return matches


def _category_predicate(value: str) -> Predicate:
    tokens = _TokenSet(value)

    def matches(resource: JsonDict) -> bool:
        category = resource.get("category")
        concepts = category if isinstance(category, list) else [category]
        return any(tokens.matches_concept(c) for c in concepts)

    return matches


def _sort_key(resource_type: str, descending: bool) -> Callable[[JsonDict], tuple[int, float]]:
    paths = _SORT_DATE_PATHS.get(resource_type, ())

    def key(resource: JsonDict) -> tuple[int, float]:
        for path in paths:
            value: Any = resource
            for step in path:
                value = value.get(step) if isinstance(value, dict) else None
            moment = parse_fhir_datetime(value) if isinstance(value, str) else None
            if moment is not None:
                timestamp = moment.timestamp()
                return (0, -timestamp if descending else timestamp)
        return (1, 0.0)  # undated resources go last either way

    return key


def parse_fhir_datetime(value: str) -> datetime | None:
    """A FHIR date/dateTime/instant as an aware datetime (partial dates: the first instant; no zone:
    UTC), or None when it is not one."""
    match = FHIR_DATE_RE.match(value)
    if match is None:
        return None
    try:
        day = date(int(match["year"]), int(match["month"] or 1), int(match["day"] or 1))
        if match["time"] is None:
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
