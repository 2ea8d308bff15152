"""cds_service.devtools: the in-memory FHIR search (``fhir_search``), and date shifting, request building
and the fixture files (``fixtures``)."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds_service.devtools.fhir_search import search
from cds_service.devtools.fixtures import (
    FIXTURE_KEYS,
    build_request,
    list_fixtures,
    load_fixture,
    record_resources,
    shift_dates,
    shift_fixture,
)
from cds_service.protocol import render_template

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"
CARD_IDS = {
    "ivig-not-first-line", "ivig-adjunct-in-context", "asys-high-risk-phenotype", "mda5-ild-ivig-adjunct",
    "ivig-safety", "ild-monitoring", "myositis-antibodies-missing",
}
HOOKS = ("order-select", "order-sign")
LOINC = "http://loinc.org"

try:
    from cds_service.engine.services import SERVICES

    TEMPLATES: dict[str, dict[str, str]] = {svc.hook: dict(svc.prefetch) for svc in SERVICES.values()}
except ImportError:
    # FALLBACK until cds_service/services.py lands: a local copy of the CONTRACTS §2 templates with the
    # codes of the terminology note.  The owner removes this fallback.
    def _codes(system: str, codes: str) -> str:
        return ",".join(f"{system}|{c}" for c in codes.split())

    _ANTIBODIES = _codes(LOINC, "11565-9 33571-1 8076-2 5234-0 99069-7 33772-5 105551-6 33771-7 56745-3 "
                                "105552-4 45149-2 105547-4 45152-6 105548-2 53016-2 53017-0 56549-9 82933-3 "
                                "99139-8 82424-3 107563-9 105529-2")
    _FALLBACK = {
        "patient": "Patient/{{context.patientId}}",
        "myositisAntibodies": "Observation?patient={{context.patientId}}&code=" + _ANTIBODIES,
        "laboratory": "Observation?patient={{context.patientId}}&category=laboratory&_sort=-date&_count=1000",
        "conditions": "Condition?patient={{context.patientId}}",
        "medications": "MedicationRequest?patient={{context.patientId}}",
        "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
        "safetyLabs": "Observation?patient={{context.patientId}}&code="
                      + _codes(LOINC, "2160-0 98979-8 2458-8 29463-7") + "&_sort=-date",
        "pulmonaryFunction": "Observation?patient={{context.patientId}}&code="
                             + _codes(LOINC, "19868-9 19872-1 19871-3 19873-9 19911-7 98130-8")
                             + "&_sort=-date",
        "plasmaExchangeOrders": "ServiceRequest?patient={{context.patientId}}&status=active,draft,on-hold",
        "plasmaExchangeProcedures": "Procedure?patient={{context.patientId}}&code="
                                    + _codes("http://www.ama-assn.org/go/cpt", "36514"),
    }
    TEMPLATES = {hook: dict(_FALLBACK) for hook in HOOKS}


# ------------------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------------------

def _obs(rid: str, code: str, when: str | None, *, system: str = LOINC, patient: str = "p1",
         status: str = "final", category: Any = None, components: list[str] | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": rid, "status": status,
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if when is not None:
        resource["effectiveDateTime"] = when
    if category is not None:
        resource["category"] = category
    if components:
        resource["component"] = [{"code": {"coding": [{"system": LOINC, "code": c}]}} for c in components]
    return resource


OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = {"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}
VITALS = {"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}

RESOURCES: list[Any] = [
    {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"},
    {"resourceType": "Patient", "id": "p2"},
    _obs("o1", "33772-5", "2026-10-01", category=[LAB]),
    _obs("o2", "53016-2", "2026-11-01T08:00:00-05:00", category=LAB),  # category as a single object
    _obs("o3", "29463-7", "2026-09-15T23:30:00Z", category=[VITALS]),
    _obs("o4", "19868-9", "2026-11-10", components=["19872-1"]),
    _obs("o5", "LOCALPL7", "2026-08-01", system="https://lab.example.org/codes", category=[LAB]),
    _obs("o6", "33772-5", None, patient="p2", category=[LAB]),
    _obs("o7", "33772-5", "2025-12-31T20:00:00-08:00", status="entered-in-error", category=[LAB]),
    {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}, "code": "not a concept",
     "recordedDate": "2026-01-01"},
    {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"}},
    {"resourceType": "Observation", "id": "bad", "subject": "Patient/p1", "code": {"coding": "33772-5"}},
    "not a resource",
    {"resourceType": "Observation", "id": "nocode", "subject": {"reference": "p1"}, "code": {"coding": [{}]}},
]


def _ids(bundle: dict[str, Any] | None) -> list[str]:
    assert bundle is not None
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"]["id"] for e in bundle["entry"]]


def test_read_returns_the_resource_or_none() -> None:
    assert search(RESOURCES, "Patient/p1") == RESOURCES[0]
    assert search(RESOURCES, "Patient/nobody") is None
    assert search(RESOURCES, "Observation/p1") is None
    assert search(RESOURCES, "https://fhir.example.org/r4/Patient/p2") == RESOURCES[1]


def test_search_bundle_shape() -> None:
    bundle = search(RESOURCES, "Observation?patient=p1&code=http://loinc.org|53016-2")
    assert bundle is not None
    assert bundle["total"] == 1
    assert bundle["entry"] == [
        {"fullUrl": "Observation/o2", "resource": RESOURCES[3], "search": {"mode": "match"}}
    ]
    absolute = search(RESOURCES, "Observation?code=53016-2", base_url="http://fhir.test:9/r4/")
    assert absolute is not None
    assert absolute["entry"][0]["fullUrl"] == "http://fhir.test:9/r4/Observation/o2"


def test_patient_and_subject_match_typed_bare_and_patient_field() -> None:
    assert set(_ids(search(RESOURCES, "Observation?patient=Patient/p1&code=33772-5"))) == {"o1", "o7"}
    assert set(_ids(search(RESOURCES, "Observation?subject=p1&code=33772-5"))) == {"o1", "o7"}
    assert _ids(search(RESOURCES, "Observation?patient=p2")) == ["o6"]
    assert _ids(search(RESOURCES, "AllergyIntolerance?patient=p1")) == ["a1"]
    # A bare reference in the data ("p1") is read as Patient/p1; a string subject is not a reference.
    assert "nocode" in _ids(search(RESOURCES, "Observation?patient=p1"))
    assert "bad" not in _ids(search(RESOURCES, "Observation?patient=p1"))
    assert _ids(search(RESOURCES, "Condition?patient=p2")) == []


def _found(query: str) -> set[str]:
    return set(_ids(search(RESOURCES, query)))


def test_code_tokens_system_code_bare_and_or() -> None:
    assert _found("Observation?patient=p1&code=http://loinc.org|33772-5,http://loinc.org|53016-2") \
        == {"o1", "o2", "o7"}
    assert _found("Observation?patient=p1&code=33772-5,29463-7") == {"o1", "o3", "o7"}
    assert _ids(search(RESOURCES, "Observation?code=http://snomed.info/sct|33772-5")) == []
    assert _ids(search(RESOURCES, "Observation?code=https://lab.example.org/codes|")) == ["o5"]
    assert _ids(search(RESOURCES, "Observation?code=|LOCALPL7")) == []
    # URL-encoded tokens are decoded first.
    assert _found("Observation?patient=p1&code=http%3A%2F%2Floinc.org%7C33772-5") == {"o1", "o7"}


def test_code_matches_observation_components_only_for_observations() -> None:
    assert _ids(search(RESOURCES, "Observation?code=http://loinc.org|19872-1")) == ["o4"]
    assert _ids(search(RESOURCES, "Observation?code=19868-9")) == ["o4"]
    procedure = {"resourceType": "Procedure", "id": "x", "code": {"text": "n/a"},
                 "component": [{"code": {"coding": [{"code": "19872-1"}]}}]}
    assert _ids(search([procedure], "Procedure?code=19872-1")) == []


def test_category_as_object_or_array() -> None:
    assert _found("Observation?patient=p1&category=laboratory") == {"o1", "o2", "o5", "o7"}
    assert _ids(search(RESOURCES, "Observation?patient=p1&category=vital-signs")) == ["o3"]
    assert set(_ids(search(
        RESOURCES,
        "Observation?patient=p1&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    ))) == {"o1", "o2", "o5", "o7"}


def test_status_or_and_unknown_parameters_ignored() -> None:
    assert _found("Observation?patient=p1&code=33772-5&status=final,amended") == {"o1"}
    assert _found("Observation?patient=p1&code=33772-5&status=entered-in-error") == {"o7"}
    assert _found("Observation?patient=p1&code=33772-5&date=ge2030&code:text=x&foo=bar") == {"o1", "o7"}


def test_id_parameter() -> None:
    assert _ids(search(RESOURCES, "Patient?_id=p2,zz")) == ["p2"]


def test_sort_by_date_mixes_precisions_and_zones_and_puts_undated_last() -> None:
    newest_first = _ids(search(RESOURCES, "Observation?code=33772-5,53016-2,29463-7,19868-9&_sort=-date"))
    # o7 is 2026-01-01T04:00Z (its local date is 2025-12-31); o6 has no date.
    assert newest_first == ["o4", "o2", "o1", "o3", "o7", "o6"]
    oldest_first = _ids(search(RESOURCES, "Observation?code=33772-5,53016-2,29463-7,19868-9&_sort=date"))
    assert oldest_first == ["o7", "o3", "o1", "o2", "o4", "o6"]


def test_paging_with_count_and_offset() -> None:
    query = "Observation?patient=p1&_sort=-date&_count=2"
    first = search(RESOURCES, query)
    assert first is not None
    everything = _ids(search(RESOURCES, "Observation?patient=p1&_sort=-date"))
    assert first["total"] == len(everything) == 7
    seen = _ids(first)
    page = first
    while True:
        links = {link["relation"]: link["url"] for link in page["link"]}
        if "next" not in links:
            break
        assert "_offset=" in links["next"] and links["next"].startswith("Observation?")
        page = search(RESOURCES, links["next"])
        assert page is not None
        assert len(page["entry"]) <= 2
        seen += _ids(page)
    assert seen == everything
    counted = search(RESOURCES, "Observation?patient=p1&_count=0")
    assert counted is not None and counted["total"] == 7 and counted["entry"] == []
    absolute = search(RESOURCES, query, base_url="http://fhir.test/r4")
    assert absolute is not None
    assert [link["url"] for link in absolute["link"] if link["relation"] == "next"][0].startswith(
        "http://fhir.test/r4/Observation?")


def test_search_rejects_what_is_not_a_fhir_url() -> None:
    with pytest.raises(ValueError):
        search(RESOURCES, "?patient=p1")


def test_search_is_linear() -> None:
    codes = ",".join(f"http://loinc.org|{n}-0" for n in range(40))
    many = [
        _obs(f"o{n}", f"{n % 50}-0", f"2026-{n % 12 + 1:02d}-01", patient=f"p{n % 7}") for n in range(30_000)
    ]
    started = time.perf_counter()
    bundle = search(many, f"Observation?patient=p3&code={codes}&_sort=-date&_count=1000")
    elapsed = time.perf_counter() - started
    assert bundle is not None and bundle["total"] > 0
    assert elapsed < 2.0


# ------------------------------------------------------------------------------------------------
# shift_dates
# ------------------------------------------------------------------------------------------------

def test_shift_dates_keeps_formats_and_skips_birth_date() -> None:
    original = {
        "resourceType": "Bundle",
        "meta": {"lastUpdated": "2026-11-22T10:00:00.123Z"},
        "entry": [{"resource": {
            "resourceType": "Patient", "birthDate": "1971-03-14", "deceasedDateTime": "2026-11-20",
        }}, {"resource": {
            "resourceType": "Observation",
            "effectiveDateTime": "2026-11-20T08:30:00-05:00",
            "issued": "2026-11-20T13:30:00.000Z",
            "effectivePeriod": {"start": "2026-11", "end": "2026"},
            "valueString": "2026-11-20",
            "note": [{"text": "drawn 2026-11-20"}],
        }}, {"resource": {
            "resourceType": "Condition", "recordedDate": "2026-12-31T23:59:59+14:00",
            "onsetDateTime": "2026-02-28", "abatementDateTime": "unknown",
        }}, {"resource": {
            "resourceType": "MedicationRequest", "authoredOn": "2026-11-22",
            "dosageInstruction": [{"timing": {"event": ["2026-11-21", "2026-11-22T09:00:00Z"]}}],
        }}],
    }
    frozen = json.dumps(original, sort_keys=True)
    shifted = shift_dates(original, 10)
    assert json.dumps(original, sort_keys=True) == frozen  # the input is not touched
    patient, obs, cond, med = (e["resource"] for e in shifted["entry"])
    assert shifted["meta"]["lastUpdated"] == "2026-12-02T10:00:00.123Z"
    assert patient["birthDate"] == "1971-03-14"
    assert patient["deceasedDateTime"] == "2026-11-30"
    assert obs["effectiveDateTime"] == "2026-11-30T08:30:00-05:00"
    assert obs["issued"] == "2026-11-30T13:30:00.000Z"
    assert obs["effectivePeriod"] == {"start": "2026-11", "end": "2026"}
    assert obs["valueString"] == "2026-11-20"
    assert obs["note"] == [{"text": "drawn 2026-11-20"}]
    assert cond["recordedDate"] == "2027-01-10T23:59:59+14:00"
    assert cond["onsetDateTime"] == "2026-03-10"
    assert cond["abatementDateTime"] == "unknown"
    assert med["authoredOn"] == "2026-12-02"
    assert med["dosageInstruction"][0]["timing"]["event"] == ["2026-12-01", "2026-12-02T09:00:00Z"]
    back = shift_dates(shifted, -10)
    assert back == original
    assert shift_dates(original, 0) == original and shift_dates(original, 0) is not original
    assert shift_dates({"start": "2026-01", "end": "2026"}, 40) == {"start": "2026-02", "end": "2026"}
    assert shift_dates({"start": "2026-12", "end": "2026"}, 200) == {"start": "2027-07", "end": "2027"}
    assert shift_dates({"date": "2026-02-30"}, 1) == {"date": "2026-02-30"}  # not a date: kept


# ------------------------------------------------------------------------------------------------
# build_request
# ------------------------------------------------------------------------------------------------

def _check_request_shape(request: dict[str, Any], hook: str, fixture: dict[str, Any]) -> None:
    assert request["hook"] == hook
    uuid.UUID(request["hookInstance"])
    context = request["context"]
    assert context["patientId"] == fixture["patientId"]
    assert context["userId"] == fixture["userId"]
    assert isinstance(context["draftOrders"], dict) and context["draftOrders"]["resourceType"] == "Bundle"
    if hook == "order-select":
        assert context["selections"] == fixture["selections"]
    else:
        assert "selections" not in context
    assert ("encounterId" in context) == ("encounterId" in fixture)
    expected_keys = {"userId", "patientId", "draftOrders", "selections", "encounterId"}
    assert set(context) <= expected_keys


@pytest.mark.parametrize("hook", HOOKS)
def test_build_request_fills_every_template(hook: str) -> None:
    fixture = load_fixture("pl7-ro52-rpild")
    templates = TEMPLATES[hook]
    request = build_request(fixture, hook, templates=templates)
    _check_request_shape(request, hook, fixture)
    assert "fhirServer" not in request
    assert set(request["prefetch"]) == set(templates)
    assert request["prefetch"]["patient"]["id"] == fixture["patientId"]
    for key, value in request["prefetch"].items():
        if key != "patient":
            assert value["resourceType"] == "Bundle" and value["type"] == "searchset", key
    pl7 = [e["resource"] for e in request["prefetch"]["myositisAntibodies"]["entry"]
           if e["resource"]["code"]["coding"][0]["code"] == "33772-5"]
    assert len(pl7) == 1
    json.dumps(request)  # plain JSON all the way down


def test_build_request_prefetch_options_and_unresolvable_tokens() -> None:
    fixture = load_fixture("ild-no-antibodies")
    templates = dict(TEMPLATES["order-sign"])
    templates["encounter"] = "Encounter/{{context.encounterId}}"
    templates["practitioner"] = "Practitioner/{{userPractitionerId}}"
    templates["role"] = "PractitionerRole?_id={{userPractitionerRoleId}}"
    request = build_request(fixture, "order-sign", templates=templates, hook_instance="fixed-instance",
                            fhir_server="http://fhir.test:8080/r4")
    assert request["hookInstance"] == "fixed-instance"
    assert request["fhirServer"] == "http://fhir.test:8080/r4"
    assert "encounter" not in request["prefetch"] and "role" not in request["prefetch"]
    assert request["prefetch"]["practitioner"] is None  # resolvable, but the read finds nothing
    conditions = request["prefetch"]["conditions"]
    assert conditions["entry"][0]["fullUrl"].startswith("http://fhir.test:8080/r4/Condition/")

    assert "prefetch" not in build_request(fixture, "order-sign", templates=templates, prefetch=False)
    only = build_request(fixture, "order-sign", templates=templates,
                         prefetch=["patient", "conditions", "nope"])
    assert set(only["prefetch"]) == {"patient", "conditions"}
    keyed = build_request(fixture, "order-sign", templates=templates, keys=["medications"])
    assert set(keyed["prefetch"]) == {"medications"}


def test_render_template() -> None:
    context = {"patientId": "fx-1", "userId": "PractitionerRole/r9"}
    assert render_template("Patient/{{ context.patientId }}", context) == "Patient/fx-1"
    assert render_template("PractitionerRole?_id={{userPractitionerRoleId}}", context) \
        == "PractitionerRole?_id=r9"
    assert render_template("Practitioner/{{userPractitionerId}}", context) is None
    assert render_template("Encounter/{{context.encounterId}}", context) is None


def test_build_request_shifts_dates_to_today_but_not_birth_dates() -> None:
    fixture = load_fixture("pl7-ro52-rpild")
    frozen = json.dumps(fixture, sort_keys=True)
    written = date.fromisoformat(fixture["today"])
    later = written + timedelta(days=400)
    request = build_request(fixture, "order-sign", templates=TEMPLATES["order-sign"], today=later)
    assert json.dumps(fixture, sort_keys=True) == frozen
    original = {r["id"]: r for r in record_resources(fixture)}
    patient = request["prefetch"]["patient"]
    assert patient["birthDate"] == original[patient["id"]]["birthDate"]
    for entry in request["prefetch"]["laboratory"]["entry"]:
        resource = entry["resource"]
        before = date.fromisoformat(original[resource["id"]]["effectiveDateTime"][:10])
        assert date.fromisoformat(resource["effectiveDateTime"][:10]) == before + timedelta(days=400)
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert draft["authoredOn"] == later.isoformat()


def test_build_request_defaults_to_real_today() -> None:
    fixture = load_fixture("pl7-ro52-rpild")
    request = build_request(fixture, "order-select", templates=TEMPLATES["order-select"])
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert draft["authoredOn"] == date.today().isoformat()
    assert shift_fixture(fixture)["today"] == date.today().isoformat()


# ------------------------------------------------------------------------------------------------
# fixture files
# ------------------------------------------------------------------------------------------------

ALL_FIXTURES = list_fixtures()


def test_fixture_catalogue() -> None:
    assert len(ALL_FIXTURES) >= 18
    assert "pl7-ro52-rpild" in ALL_FIXTURES
    assert sorted(p.stem for p in FIXTURES_DIR.glob("*.json")) == ALL_FIXTURES
    covered = {
        card for name in ALL_FIXTURES for ids in load_fixture(name)["expected"].values() for card in ids
    }
    assert covered == CARD_IDS
    silent = [name for name in ALL_FIXTURES if not any(load_fixture(name)["expected"].values())]
    assert len(silent) >= 3
    assert any(load_fixture(n)["expected"]["order-select"] == [] and load_fixture(n)["expected"]["order-sign"]
               for n in ALL_FIXTURES)


def test_load_fixture_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown fixture 'no-such-patient'"):
        load_fixture("no-such-patient")
    for bad in ("../pyproject", "a/b", "a\\b", ".hidden", ""):
        with pytest.raises(ValueError):
            load_fixture(bad)
    assert list_fixtures(tmp_path) == []
    assert list_fixtures(tmp_path / "missing") == []
    (tmp_path / "one.json").write_text('{"name": "one"}')
    assert list_fixtures(tmp_path) == ["one"]
    assert load_fixture("one", tmp_path) == {"name": "one"}
    assert load_fixture("one.json", tmp_path) == {"name": "one"}


def _references(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                found.append(item)
            else:
                found += _references(item)
    elif isinstance(value, list):
        for item in value:
            found += _references(item)
    return found


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixture_file(name: str) -> None:
    fixture = load_fixture(name)
    for key in FIXTURE_KEYS:
        assert key in fixture, key
    assert fixture["name"] == name
    assert fixture["description"].strip() and "\n" not in fixture["description"]
    assert fixture["patientId"].startswith("fx-")
    assert fixture["today"] == "2026-11-22"
    assert re.fullmatch(r"(Practitioner|PractitionerRole)/[\w.-]+", fixture["userId"])
    assert fixture["record"]["resourceType"] == "Bundle" and fixture["record"]["type"] == "collection"
    assert fixture["draftOrders"]["resourceType"] == "Bundle"

    resources = record_resources(fixture)
    drafts = [e["resource"] for e in fixture["draftOrders"]["entry"]]
    assert 8 <= len(resources) <= 40
    keys = [f"{r['resourceType']}/{r['id']}" for r in resources + drafts]
    assert len(keys) == len(set(keys)), "resource ids must be unique"
    assert all(r["id"].startswith("fx-") for r in resources + drafts)
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert [p["id"] for p in patients] == [fixture["patientId"]]
    for resource in resources + drafts:
        subject = resource.get("subject") or resource.get("patient")
        if resource["resourceType"] != "Patient":
            assert isinstance(subject, dict) and subject["reference"] == f"Patient/{fixture['patientId']}"
    for reference in _references(fixture["record"]) + _references(fixture["draftOrders"]):
        # people, encounters, contained resources, or another resource of the same record (reasonReference)
        assert reference.startswith(("Patient/", "Practitioner/", "Encounter/", "#")) or reference in keys, reference
    if "encounterId" in fixture:
        assert f"Encounter/{fixture['encounterId']}" in keys

    draft_refs = {f"{r['resourceType']}/{r['id']}" for r in drafts}
    assert fixture["selections"] and set(fixture["selections"]) <= draft_refs
    assert all(r["status"] == "draft" for r in drafts)

    assert set(fixture["expected"]) == set(HOOKS)
    for ids in fixture["expected"].values():
        assert set(ids) <= CARD_IDS
        assert len(ids) == len(set(ids))
    assert set(fixture.get("invalidResources", [])) <= set(keys)


def test_resource_ids_are_unique_across_fixtures() -> None:
    # The test FHIR server may hold every fixture at once.
    seen: dict[str, str] = {}
    for name in ALL_FIXTURES:
        fixture = load_fixture(name)
        for resource in record_resources(fixture) + [e["resource"] for e in fixture["draftOrders"]["entry"]]:
            key = f"{resource['resourceType']}/{resource['id']}"
            assert key not in seen, f"{key} in {name} and {seen.get(key)}"
            seen[key] = name


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixture_resources_are_valid_r4_except_the_deliberate_ones(name: str) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    fixture = load_fixture(name)
    invalid = set(fixture.get("invalidResources", []))
    for resource in record_resources(fixture) + [e["resource"] for e in fixture["draftOrders"]["entry"]]:
        key = f"{resource['resourceType']}/{resource['id']}"
        model = get_fhir_model_class(resource["resourceType"])
        if key in invalid:
            with pytest.raises(ValueError):
                model.model_validate(resource)
        else:
            model.model_validate(resource)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixture_data_reaches_the_service_through_prefetch(name: str) -> None:
    fixture = load_fixture(name)
    templates = TEMPLATES["order-sign"]
    request = build_request(fixture, "order-sign", templates=templates)
    assert set(request["prefetch"]) == set(templates)
    prefetched = {
        (e["resource"]["resourceType"], e["resource"]["id"])
        for value in request["prefetch"].values()
        if isinstance(value, dict) and value.get("resourceType") == "Bundle"
        for e in value["entry"]
    }
    for resource in record_resources(fixture):
        if resource["resourceType"] in ("Condition", "MedicationRequest", "MedicationStatement",
                                        "ServiceRequest"):
            assert (resource["resourceType"], resource["id"]) in prefetched, resource["id"]
        if resource["resourceType"] == "Observation":
            category = json.dumps(resource.get("category"))
            if "laboratory" in category:
                assert (resource["resourceType"], resource["id"]) in prefetched, resource["id"]


def test_readme_lists_every_fixture_with_its_expected_cards() -> None:
    readme = (FIXTURES_DIR / "README.md").read_text(encoding="utf-8")
    readme = readme.split("## The patients", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9-]+)` \|.*$", readme, re.MULTILINE)}
    assert set(rows) == set(ALL_FIXTURES)
    for name in ALL_FIXTURES:
        cells = rows[name].split(" | ")
        for hook, cell in zip(HOOKS, cells[-2:], strict=True):
            assert re.findall(r"`([a-z0-9-]+)`", cell) == load_fixture(name)["expected"][hook], (name, hook)
