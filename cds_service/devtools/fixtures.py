"""Synthetic patients (``fixtures/*.json``) and the CDS Hooks requests built from them.

Used by the table-driven tests, the test FHIR server, the demo page and ``cds-service fire``:

- ``search`` answers a FHIR REST query (read or search) over a plain list of resource dicts, the way a
  small FHIR server would, so prefetch can be filled exactly as a client fills it;
- ``shift_dates`` moves every date in a fixture so that "within the last 90 days" stays true whatever day
  the tests run (fixtures are written against a fixed ``today``);
- ``build_request`` turns a fixture into an ``order-select`` or ``order-sign`` request.

No HTTP here: the test FHIR server and the CLI wrap these functions.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from cds_service.protocol import render_template as protocol_render_template
from cds_service.settings import DEFAULT_FIXTURES_DIR

JsonDict = dict[str, Any]
Predicate = Callable[[JsonDict], bool]

FIXTURE_KEYS = ("name", "description", "patientId", "userId", "today", "record", "draftOrders",
                "selections", "expected")

# --------------------------------------------------------------------------------------------------
# In-memory FHIR search
# --------------------------------------------------------------------------------------------------

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
_FHIR_DATE_RE = re.compile(
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
    match = _FHIR_DATE_RE.match(value)
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


# --------------------------------------------------------------------------------------------------
# Date shifting
# --------------------------------------------------------------------------------------------------

# Keys that hold a date/dateTime/instant besides the ``...DateTime``/``...Date``/``...Instant`` names.
_DATE_KEYS = frozenset({
    "date", "start", "end", "issued", "authoredOn", "recorded", "lastUpdated", "dateAsserted",
    "dateWritten", "timestamp", "whenHandedOver", "whenPrepared", "event", "created",
})
_DAYS_PER_YEAR = 365.2425
_DAYS_PER_MONTH = _DAYS_PER_YEAR / 12
# Dates that describe the person, not the episode: never shifted.
_UNSHIFTED_KEYS = frozenset({"birthDate"})


def _is_date_key(key: str) -> bool:
    if key in _UNSHIFTED_KEYS:
        return False
    return key in _DATE_KEYS or key.endswith(("DateTime", "Date", "Instant"))


def shift_date_string(value: str, days: int) -> str:
    """Shift one FHIR date/dateTime/instant by ``days``, keeping its precision, time and zone as
    written; anything that is not such a value comes back unchanged."""
    match = _FHIR_DATE_RE.match(value)
    if match is None:
        return value
    year, month = int(match["year"]), int(match["month"] or 1)
    try:
        if match["day"] is not None:
            text = (date(year, month, int(match["day"])) + timedelta(days=days)).isoformat()
        elif match["month"] is not None:
            if not 1 <= month <= 12:
                return value
            # Partial dates move by whole months / years (rounded), so a shift and its inverse cancel out.
            months = year * 12 + month - 1 + round(days / _DAYS_PER_MONTH)
            text = f"{months // 12:04d}-{months % 12 + 1:02d}"
        else:
            text = f"{year + round(days / _DAYS_PER_YEAR):04d}"
    except (ValueError, OverflowError):
        return value
    if not text[:4].isdigit() or len(text.split("-", 1)[0]) != 4:
        return value  # moved outside years 0001-9999
    return text + (match["time"] or "")


def shift_dates(obj: Any, days: int) -> Any:
    """A deep copy of ``obj`` with every FHIR date/dateTime/instant value moved by ``days``.

    Values are recognised by their key (``effectiveDateTime``, ``issued``, ``authoredOn``,
    ``recordedDate``, ``start``/``end`` of a Period, ``lastUpdated`` …) and their format; ``birthDate``
    is kept as written.
    """
    return _shift(obj, days, date_valued=False)


def _shift(obj: Any, days: int, *, date_valued: bool) -> Any:
    if isinstance(obj, dict):
        return {
            key: _shift(value, days, date_valued=isinstance(key, str) and _is_date_key(key))
            for key, value in obj.items()
        }
    if isinstance(obj, list):
        return [_shift(v, days, date_valued=date_valued) for v in obj]
    if date_valued and isinstance(obj, str):
        return shift_date_string(obj, days)
    return obj  # str, int, float, bool, None: immutable


# --------------------------------------------------------------------------------------------------
# Fixture files
# --------------------------------------------------------------------------------------------------

def _fixtures_dir(directory: Path | None) -> Path:
    return Path(directory) if directory is not None else DEFAULT_FIXTURES_DIR


def list_fixtures(directory: Path | None = None) -> list[str]:
    """Names of the fixtures in ``directory`` (default: the project's ``fixtures/``), sorted."""
    folder = _fixtures_dir(directory)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if p.is_file())


def load_fixture(name: str, directory: Path | None = None) -> JsonDict:
    """The fixture called ``name`` (file name without ``.json``)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        raise ValueError(f"invalid fixture name {name!r}: use a name from list_fixtures()")
    name = name.removesuffix(".json")
    path = _fixtures_dir(directory) / f"{name}.json"
    if not path.is_file():
        known = ", ".join(list_fixtures(directory)) or "(none)"
        raise KeyError(f"unknown fixture {name!r}; known fixtures: {known}")
    with path.open(encoding="utf-8") as handle:
        fixture: JsonDict = json.load(handle)
    return fixture


def record_resources(fixture: Mapping[str, Any]) -> list[JsonDict]:
    """The resources of the fixture's ``record`` Bundle (shared, not copied)."""
    record = fixture.get("record")
    entries = record.get("entry") if isinstance(record, dict) else None
    if not isinstance(entries, list):
        return []
    return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]


def days_to_shift(fixture: Mapping[str, Any], today: date | None = None) -> int:
    """Days between the fixture's ``today`` and the real (or given) today."""
    written = date.fromisoformat(str(fixture["today"]))
    return ((today or date.today()) - written).days


def shift_fixture(fixture: Mapping[str, Any], today: date | None = None) -> JsonDict:
    """A copy of the fixture with ``record`` and ``draftOrders`` moved to ``today`` (default: now)."""
    days = days_to_shift(fixture, today)
    shifted: JsonDict = copy.deepcopy(dict(fixture))
    for key in ("record", "draftOrders"):
        if key in fixture:
            shifted[key] = shift_dates(fixture[key], days)
    shifted["today"] = (today or date.today()).isoformat()
    return shifted


# --------------------------------------------------------------------------------------------------
# CDS Hooks requests
# --------------------------------------------------------------------------------------------------



def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """Fill a prefetch template's ``{{context.x}}`` / ``{{userPractitionerId}}`` tokens from the
    context (unencoded: the in-memory search reads it); None when a token cannot be resolved
    (clients leave such keys out)."""
    return protocol_render_template(template, context, encode=False)


def _draft_references(draft_orders: Any) -> list[str]:
    entries = draft_orders.get("entry") if isinstance(draft_orders, dict) else None
    references: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") and resource.get("id"):
            references.append(f"{resource['resourceType']}/{resource['id']}")
    return references


def _service_templates(hook: str) -> dict[str, str]:
    # Imported here: services.py builds its templates from the value sets, which fixtures need not load.
    from cds_service.engine.services import SERVICES

    for service in SERVICES.values():
        if service.hook == hook:
            return dict(service.prefetch)
    raise KeyError(f"no service for hook {hook!r}")


def build_request(
    fixture: Mapping[str, Any],
    hook: str,
    *,
    templates: Mapping[str, str] | None = None,
    prefetch: bool | Sequence[str] = True,
    keys: Sequence[str] | None = None,
    fhir_server: str | None = None,
    today: date | None = None,
    hook_instance: str | None = None,
) -> JsonDict:
    """A CDS Hooks 2.0 request for ``hook`` (``order-select`` or ``order-sign``) from a fixture.

    Dates in the record and draft orders are moved by (``today`` - fixture ``today``).  Prefetch is
    filled the way a client fills it: each template is rendered from the context (a template with an
    unresolvable token is left out) and run with ``search`` over the record; a read that finds nothing
    gives null.  ``prefetch=False`` sends none; a list (or ``keys``) sends only those keys.
    ``templates`` defaults to the prefetch of the service registered for ``hook``.
    """
    days = days_to_shift(fixture, today)
    record = shift_dates(fixture.get("record", {}), days)
    draft_orders = shift_dates(fixture.get("draftOrders", {"resourceType": "Bundle", "entry": []}), days)

    context: JsonDict = {"userId": fixture["userId"], "patientId": fixture["patientId"]}
    if fixture.get("encounterId"):
        context["encounterId"] = fixture["encounterId"]
    if hook == "order-select":
        selections = fixture.get("selections")
        context["selections"] = list(selections) if isinstance(selections, list) else _draft_references(
            draft_orders)
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = draft_orders

    request: JsonDict = {"hook": hook, "hookInstance": hook_instance or str(uuid.uuid4())}
    if fhir_server is not None:
        request["fhirServer"] = fhir_server
    request["context"] = context

    if prefetch is False:
        return request
    wanted: set[str] | None = None
    if not isinstance(prefetch, bool):
        wanted = set(prefetch)
    if keys is not None:
        wanted = set(keys) if wanted is None else wanted & set(keys)
    resolved_templates = dict(templates) if templates is not None else _service_templates(hook)
    resources = record_resources({"record": record})
    filled: JsonDict = {}
    for key, template in resolved_templates.items():
        if wanted is not None and key not in wanted:
            continue
        url = render_template(template, context)
        if url is None:
            continue
        # Each key gets its own copy, as it would from a JSON round trip.
        filled[key] = copy.deepcopy(search(resources, url, base_url=fhir_server))
    request["prefetch"] = filled
    return request
