"""Synthetic patients (``fixtures/*.json``) and the CDS Hooks requests built from them.

Used by the table-driven tests, the demo page, the review packet and ``cds-service fire``:

- ``list_fixtures`` / ``load_fixture`` read the fixture files (default: the package's fixtures);
- ``shift_dates`` moves every date in a fixture so that "within the last 90 days" stays true whatever day
  the tests run (fixtures are written against a fixed ``today``);
- ``build_request`` turns a fixture into an ``order-select`` or ``order-sign`` request.

Prefetch is filled with ``fhir_search.search`` (re-exported here).  No HTTP here: the test FHIR
server and the CLI wrap these functions.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from cds_service.devtools.fhir_search import FHIR_DATE_RE, parse_fhir_datetime, search
from cds_service.protocol import HOOKS, render_template
from cds_service.settings import DEFAULT_FIXTURES_DIR

__all__ = ["FIXTURE_KEYS", "build_request", "days_to_shift", "list_fixtures", "load_fixture",
           "parse_fhir_datetime", "record_resources", "search", "shift_date_string", "shift_dates",
           "shift_fixture"]

JsonDict = dict[str, Any]

FIXTURE_KEYS = ("name", "description", "patientId", "userId", "today", "record", "draftOrders",
                "selections", "expected")

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
    match = FHIR_DATE_RE.match(value)
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
    if hook in HOOKS:
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
        # Unencoded: the in-memory search reads the values as they are.
        url = render_template(template, context, encode=False)
        if url is None:
            continue
        # Each key gets its own copy, as it would from a JSON round trip.
        filled[key] = copy.deepcopy(search(resources, url, base_url=fhir_server))
    request["prefetch"] = filled
    return request
