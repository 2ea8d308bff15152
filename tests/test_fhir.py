"""The FHIR fallback (issue 4): the client's safety rules and ``gather`` against a real loopback server."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fhir_server import FhirTestServer, operation_outcome

from cds_service.devtools.fixtures import search
from cds_service.engine.fhir import FhirClient, FhirError, Gathered, allowed, gather, render_template
from cds_service.engine.services import ServiceDefinition
from cds_service.errors import PreconditionFailed
from cds_service.protocol import HookRequest
from cds_service.settings import Settings, load_settings

PATIENT_ID = "pt-7731"
TOKEN = "tok-SECRET-5f1e9c0a"  # noqa: S105 - a test value that must never leak
LOINC = "http://loinc.org"


def _obs(oid: str, code: str, category: str, date: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": date,
    }


RECORD: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": PATIENT_ID},
    _obs("ab-1", "33772-5", "laboratory", "2026-01-02"),
    _obs("ab-2", "33773-3", "laboratory", "2026-01-03"),
    *[_obs(f"lab-{i}", "2160-0", "laboratory", f"2026-02-{i + 1:02d}") for i in range(7)],
    {"resourceType": "Condition", "id": "c-1", "subject": {"reference": f"Patient/{PATIENT_ID}"},
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "233703007"}]}},
    {"resourceType": "Condition", "id": "c-2", "subject": {"reference": f"Patient/{PATIENT_ID}"},
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "399907009"}]}},
    {"resourceType": "MedicationRequest", "id": "mr-1", "status": "active", "intent": "order",
     "subject": {"reference": f"Patient/{PATIENT_ID}"}},
    {"resourceType": "Condition", "id": "other-1", "subject": {"reference": "Patient/someone-else"}},
]

TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "antibodies": "Observation?patient={{context.patientId}}&code=http://loinc.org|33772-5,http://loinc.org|33773-3",
    "laboratory": "Observation?patient={{context.patientId}}&category=laboratory",
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
}
LAB_PAGED_2 = f"Observation?patient={PATIENT_ID}&category=laboratory&_count=2"
LAB_PAGED_5 = f"Observation?patient={PATIENT_ID}&category=laboratory&_count=5"
REQUIRED = frozenset({"antibodies", "conditions", "medications"})
SERVICE = ServiceDefinition(id="test-service", hook="order-select", title="t", description="d",
                            usage_requirements="u", prefetch=TEMPLATES, required_keys=REQUIRED)


def make_settings(**overrides: Any) -> Settings:
    return load_settings(overrides, environ={})


def full_prefetch(base_url: str | None = None, templates: dict[str, str] = TEMPLATES) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, template in templates.items():
        url = template.replace("{{context.patientId}}", PATIENT_ID)
        out[key] = search(RECORD, url, base_url=base_url)
    return out


def make_request(prefetch: dict[str, Any] | None = None, *, fhir_server: str | None = None,
                 token: str | None = None, patient_id: str = PATIENT_ID,
                 encounter_id: str | None = None) -> HookRequest:
    context: dict[str, Any] = {"patientId": patient_id, "userId": "Practitioner/dr-1",
                               "draftOrders": {"resourceType": "Bundle", "entry": []}, "selections": []}
    if encounter_id is not None:
        context["encounterId"] = encounter_id
    return HookRequest(hook="order-select", hook_instance="0d1c1b2e-0000-4000-8000-000000000001",
                       context=context, prefetch=prefetch, fhir_server=fhir_server, access_token=token,
                       patient_id=patient_id, user_id="Practitioner/dr-1", encounter_id=encounter_id)


@pytest.fixture
def server() -> Iterator[FhirTestServer]:
    with FhirTestServer(RECORD) as running:
        yield running


@pytest.fixture
def client() -> Iterator[FhirClient]:
    with FhirClient(pool_size=8) as fhir_client:
        yield fhir_client


def run(request: HookRequest, server: FhirTestServer | None, client: FhirClient,
        service: ServiceDefinition = SERVICE, **settings: Any) -> Gathered:
    if server is not None:
        settings.setdefault("FHIR_SERVERS", server.base_url)
    return gather(request, service, make_settings(**settings), client)


def status_reason(result: Gathered, key: str) -> tuple[str, str]:
    return result.outcomes[key].status, result.outcomes[key].reason


def ids(resources: list[dict[str, Any]]) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in resources}


# --------------------------------------------------------------------------------------------------
# allow-list
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "allow_list", "expected"), [
    ("https://good.example.org/fhir", ["https://good.example.org/fhir"], True),
    ("https://good.example.org/fhir/", ["https://good.example.org/fhir"], True),
    ("https://good.example.org/fhir/R4", ["https://good.example.org/fhir"], True),
    ("https://good.example.org/fhir", ["https://good.example.org/fhir/"], True),
    ("https://GOOD.example.org/fhir", ["https://good.example.org"], True),
    ("https://good.example.org:443/fhir", ["https://good.example.org"], True),
    ("https://good.example.org/fhir", ["https://good.example.org:443/"], True),
    # prefix tricks
    ("https://good.example.org.evil.com/fhir", ["https://good.example.org"], False),
    ("https://good.example.org.evil.com", ["https://good.example.org"], False),
    ("https://good.example.orgx/fhir", ["https://good.example.org"], False),
    ("https://good.example.org/fhir-admin", ["https://good.example.org/fhir"], False),
    ("https://good.example.org/fhirx", ["https://good.example.org/fhir"], False),
    ("https://good.example.org/fhir/../admin", ["https://good.example.org/fhir"], False),
    ("https://good.example.org/fhir/%2e%2e/admin", ["https://good.example.org/fhir"], False),
    ("https://good.example.org/fhir/..%2fadmin", ["https://good.example.org/fhir"], False),
    ("https://good.example.org:8443/fhir", ["https://good.example.org/fhir"], False),
    ("https://good.example.org@evil.com/fhir", ["https://good.example.org"], False),
    ("https://user:pw@good.example.org/fhir", ["https://good.example.org"], False),
    ("https://good.example.org\\@evil.com/fhir", ["https://good.example.org"], False),
    ("https://good.example.org /fhir", ["https://good.example.org"], False),
    ("https://good.example.org/fhir#frag", ["https://good.example.org"], False),
    # schemes
    ("http://good.example.org/fhir", ["https://good.example.org"], False),
    ("https://good.example.org/fhir", ["http://good.example.org"], False),
    ("ftp://good.example.org/fhir", ["ftp://good.example.org"], False),
    ("file:///etc/passwd", ["*"], False),
    ("//good.example.org/fhir", ["*"], False),
    ("good.example.org/fhir", ["*"], False),
    # * = any https, never http
    ("https://anything.example.net/r4", ["*"], True),
    ("http://anything.example.net/r4", ["*"], False),
    ("http://127.0.0.1:8080/fhir", ["*"], False),
    # plain http only with its explicit prefix
    ("http://127.0.0.1:8080/fhir", ["http://127.0.0.1:8080"], True),
    ("http://127.0.0.1:8080/fhir", ["*", "http://127.0.0.1:8080/fhir"], True),
    ("http://127.0.0.1:8081/fhir", ["http://127.0.0.1:8080"], False),
    ("http://localhost:8080/fhir", ["http://127.0.0.1:8080"], False),
    # empty or broken allow-lists admit nothing
    ("https://good.example.org/fhir", [], False),
    ("https://good.example.org/fhir", [""], False),
    ("https://good.example.org/fhir", ["good.example.org"], False),
    ("", ["*"], False),
])
def test_allow_list(url: str, allow_list: list[str], expected: bool) -> None:
    assert allowed(url, allow_list) is expected


def test_query_string_is_not_part_of_the_match() -> None:
    assert allowed("https://good.example.org/fhir/Observation?_getpages=abc&x=https://evil.com",
                   ["https://good.example.org/fhir"])


# --------------------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------------------

def test_get_returns_resource_with_accept_and_bearer(server: FhirTestServer, client: FhirClient) -> None:
    resource = client.get(f"{server.base_url}/Patient/{PATIENT_ID}", TOKEN, 5)
    assert resource == {"resourceType": "Patient", "id": PATIENT_ID}
    assert server.requests[0].authorization == f"Bearer {TOKEN}"


def test_get_without_token_sends_no_authorization(server: FhirTestServer, client: FhirClient) -> None:
    client.get(f"{server.base_url}/Patient/{PATIENT_ID}", None, 5)
    client.get(f"{server.base_url}/Patient/{PATIENT_ID}", TOKEN, 5)
    client.get(f"{server.base_url}/Patient/{PATIENT_ID}", None, 5)
    assert [r.authorization for r in server.requests] == [None, f"Bearer {TOKEN}", None]


@pytest.mark.parametrize(("behaviour", "reason", "status"), [
    ({"fail_status": 500}, "http 500", 500),
    ({"fail_status": 401}, "http 401", 401),
    ({"html": True}, "non-FHIR response", None),
])
def test_get_errors(server: FhirTestServer, client: FhirClient, behaviour: dict[str, Any], reason: str,
                    status: int | None) -> None:
    for name, value in behaviour.items():
        setattr(server, name, value)
    with pytest.raises(FhirError) as info:
        client.get(f"{server.base_url}/Condition?patient={PATIENT_ID}", TOKEN, 5)
    assert info.value.reason == reason
    assert info.value.status == status
    assert str(info.value) == reason


@pytest.mark.parametrize("body", ['{"no": "resourceType"}', "[1, 2]", "not json", '{"resourceType": ""}', ""])
def test_get_non_fhir_json(server: FhirTestServer, client: FhirClient, body: str) -> None:
    server.override("Patient/", body=body or None, status=200 if body else 204)
    with pytest.raises(FhirError) as info:
        client.get(f"{server.base_url}/Patient/{PATIENT_ID}", None, 5)
    assert info.value.reason in ("non-FHIR response", "http 204")


def test_get_response_size_cap(server: FhirTestServer, client: FhirClient) -> None:
    big = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in RECORD] * 50}
    server.override("Observation", body=big)
    with pytest.raises(FhirError, match="^response too large$"):
        client.get(f"{server.base_url}/Observation?patient={PATIENT_ID}", None, 5, max_bytes=2048)
    # Without a Content-Length the stream is cut off as it is read.
    server.override("Observation", body=big, headers={"Content-Length": None})
    with pytest.raises(FhirError, match="^response too large$"):
        client.get(f"{server.base_url}/Observation?patient={PATIENT_ID}", None, 5, max_bytes=2048)
    assert client.get(f"{server.base_url}/Observation?patient={PATIENT_ID}", None, 5)["entry"]
    server.overrides.clear()
    answer = client.get(f"{server.base_url}/Observation?patient={PATIENT_ID}", None, 5)
    assert answer["resourceType"] == "Bundle"


def test_get_follows_same_server_redirect(server: FhirTestServer, client: FhirClient) -> None:
    server.override("Patient/old", status=302,
                    headers={"Location": f"{server.base_path}/Patient/{PATIENT_ID}"})
    resource = client.get(f"{server.base_url}/Patient/old", TOKEN, 5, allow_list=[server.base_url])
    assert resource["id"] == PATIENT_ID
    assert [r.authorization for r in server.requests] == [f"Bearer {TOKEN}"] * 2


def test_get_refuses_redirect_off_server(server: FhirTestServer, client: FhirClient) -> None:
    with FhirTestServer(RECORD) as other:
        server.override("Patient/", status=307,
                        headers={"Location": f"{other.base_url}/Patient/{PATIENT_ID}"})
        with pytest.raises(FhirError, match="^redirect off server$"):
            client.get(f"{server.base_url}/Patient/{PATIENT_ID}", TOKEN, 5)
        assert other.requests == []


def test_get_refuses_redirect_outside_allow_list(server: FhirTestServer, client: FhirClient) -> None:
    server.override("Patient/", status=302,
                    headers={"Location": f"{server.origin}/admin/Patient/{PATIENT_ID}"})
    with pytest.raises(FhirError, match="^redirect off server$"):
        client.get(f"{server.base_url}/Patient/{PATIENT_ID}", None, 5, allow_list=[server.base_url])
    assert len(server.requests) == 1


def test_get_follows_at_most_three_redirects(server: FhirTestServer, client: FhirClient) -> None:
    server.override("Patient/loop", status=301, headers={"Location": f"{server.base_url}/Patient/loop"})
    with pytest.raises(FhirError, match="^too many redirects$"):
        client.get(f"{server.base_url}/Patient/loop", None, 5)
    assert len(server.requests) == 4  # the first request + 3 redirects


def test_get_refuses_disallowed_url_without_contacting(server: FhirTestServer, client: FhirClient) -> None:
    with pytest.raises(FhirError, match="^server not allowed$"):
        client.get(f"{server.base_url}/Patient/{PATIENT_ID}", TOKEN, 5, allow_list=["https://other.example.org"])
    assert server.requests == []


def test_get_timeout(server: FhirTestServer, client: FhirClient) -> None:
    server.delay = 5
    started = time.monotonic()
    with pytest.raises(FhirError, match="^timeout$"):
        client.get(f"{server.base_url}/Patient/{PATIENT_ID}", TOKEN, 0.3)
    assert time.monotonic() - started < 2


def test_client_repr_and_errors_hold_no_token(server: FhirTestServer, client: FhirClient) -> None:
    server.fail_status = 401
    with pytest.raises(FhirError) as info:
        client.get(f"{server.base_url}/Condition?patient={PATIENT_ID}", TOKEN, 5)
    assert TOKEN not in repr(info.value) and PATIENT_ID not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None
    assert TOKEN not in repr(client) and TOKEN not in repr(vars(client))
    assert "Authorization" not in client._session.headers


# --------------------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------------------

def test_render_template_encodes_and_detects_unresolvable() -> None:
    request = make_request(patient_id="a b/c&d", encounter_id=None)
    assert render_template("Patient/{{context.patientId}}", request) == "Patient/a%20b%2Fc%26d"
    assert render_template("Encounter/{{context.encounterId}}", request) is None
    assert render_template("Practitioner/{{userPractitionerId}}", request) == "Practitioner/dr-1"
    assert render_template("X?y={{context.nope}}", request) is None
    assert render_template("X?y={{today()}}", request) is None


# --------------------------------------------------------------------------------------------------
# gather: per key
# --------------------------------------------------------------------------------------------------

def test_full_prefetch_needs_no_server(server: FhirTestServer, client: FhirClient) -> None:
    result = run(make_request(full_prefetch(), fhir_server=server.base_url), server, client)
    assert {k: o.status for k, o in result.outcomes.items()} == dict.fromkeys(TEMPLATES, "prefetch")
    assert server.requests == []
    assert result.failed_keys == [] and result.incomplete_keys == []
    assert ids(result.resources) == ids([r for r in RECORD if r["id"] != "other-1"])


def test_full_prefetch_without_fhir_server(client: FhirClient) -> None:
    result = run(make_request(full_prefetch()), None, client)
    assert all(o.status == "prefetch" for o in result.outcomes.values())


def test_absent_key_is_fetched_with_the_template(server: FhirTestServer, client: FhirClient) -> None:
    prefetch = full_prefetch()
    del prefetch["conditions"]
    result = run(make_request(prefetch, fhir_server=server.base_url, token=TOKEN), server, client)
    assert result.outcomes["conditions"].status == "fetched"
    assert result.outcomes["conditions"].entries == 2
    assert ids(result.by_key["conditions"]) == {"Condition/c-1", "Condition/c-2"}
    assert [(r.path, r.params) for r in server.requests] == [("Condition", {"patient": PATIENT_ID})]


def test_null_key_is_not_queried(server: FhirTestServer, client: FhirClient) -> None:
    prefetch = full_prefetch()
    prefetch["conditions"] = None
    prefetch["patient"] = None
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert result.outcomes["conditions"].status == "null"
    assert result.by_key["conditions"] == []
    assert result.failed_keys == []
    assert server.requests == []


@pytest.mark.parametrize("value", [
    operation_outcome("prefetch failed"),
    {"resourceType": "Bundle", "type": "searchset",
     "entry": [{"resource": operation_outcome("prefetch failed"), "search": {"mode": "outcome"}}]},
    {"not": "a resource"},
])
def test_operation_outcome_prefetch_is_queried(server: FhirTestServer, client: FhirClient,
                                               value: Any) -> None:
    prefetch = full_prefetch()
    prefetch["medications"] = value
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert result.outcomes["medications"].status == "fetched"
    assert ids(result.by_key["medications"]) == {"MedicationRequest/mr-1"}
    assert server.paths() == ["MedicationRequest"]
    assert all(r["resourceType"] != "OperationOutcome" for r in result.resources)


def test_bundle_with_data_and_outcome_is_data(server: FhirTestServer, client: FhirClient) -> None:
    prefetch = full_prefetch()
    prefetch["conditions"]["entry"].append({"resource": operation_outcome("partial"),
                                            "search": {"mode": "outcome"}})
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert result.outcomes["conditions"].status == "prefetch"
    assert result.outcomes["conditions"].entries == 2
    assert server.requests == []


def test_empty_bundle_prefetch_is_data(server: FhirTestServer, client: FhirClient) -> None:
    prefetch = full_prefetch()
    prefetch["medications"] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert result.outcomes["medications"].status == "prefetch"
    assert result.outcomes["medications"].entries == 0
    assert server.requests == []


def test_patient_read_404_is_null(server: FhirTestServer, client: FhirClient) -> None:
    server.resources = [r for r in RECORD if r["resourceType"] != "Patient"]
    prefetch = full_prefetch()
    del prefetch["patient"]
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert result.outcomes["patient"].status == "null"
    assert result.failed_keys == []


def test_search_404_is_failed(server: FhirTestServer, client: FhirClient) -> None:
    server.override("Observation", status=404, body=operation_outcome("unknown type"))
    prefetch = full_prefetch()
    del prefetch["laboratory"]
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert status_reason(result, "laboratory") == ("failed", "http 404")


def test_200_operation_outcome_answer_is_failed(server: FhirTestServer, client: FhirClient) -> None:
    server.override("Observation", body=operation_outcome("too costly"))
    prefetch = full_prefetch()
    del prefetch["laboratory"]
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert (result.outcomes["laboratory"].status, result.outcomes["laboratory"].reason) == (
        "failed", "OperationOutcome")


def test_unresolvable_template_is_skipped(server: FhirTestServer, client: FhirClient) -> None:
    service = ServiceDefinition(id="t", hook="order-select", title="t", description="d",
                                usage_requirements="u",
                                prefetch={**TEMPLATES, "encounter": "Encounter/{{context.encounterId}}"},
                                required_keys=REQUIRED)
    result = run(make_request(full_prefetch(), fhir_server=server.base_url), server, client, service)
    assert (result.outcomes["encounter"].status, result.outcomes["encounter"].reason) == (
        "skipped", "unresolvable template")
    assert result.failed_keys == ["encounter"]
    assert server.requests == []


def test_patient_id_is_url_encoded(server: FhirTestServer, client: FhirClient) -> None:
    run(make_request(None, fhir_server=server.base_url, patient_id="x y&code=z"), server, client)
    conditions = [r for r in server.requests if r.path == "Condition"]
    assert conditions[0].query == "patient=x%20y%26code%3Dz"
    assert conditions[0].params == {"patient": "x y&code=z"}


def test_resources_are_unique_across_keys(server: FhirTestServer, client: FhirClient) -> None:
    result = run(make_request(full_prefetch(), fhir_server=server.base_url), server, client)
    # ab-1/ab-2 are in both "antibodies" and "laboratory"
    assert len(result.resources) == len(ids(result.resources))
    assert "Observation/ab-1" in ids(result.by_key["antibodies"]) & ids(result.by_key["laboratory"])


# --------------------------------------------------------------------------------------------------
# gather: servers
# --------------------------------------------------------------------------------------------------

def test_disallowed_server_is_never_contacted(server: FhirTestServer, client: FhirClient) -> None:
    with pytest.raises(PreconditionFailed) as info:
        run(make_request(None, fhir_server=server.base_url, token=TOKEN), server, client,
            FHIR_SERVERS="https://fhir.example.org,*")
    assert server.requests == []
    assert sorted(info.value.missing_keys) == sorted(REQUIRED)
    assert "server not allowed" in info.value.detail


def test_disallowed_server_with_only_optional_keys_missing(server: FhirTestServer,
                                                           client: FhirClient) -> None:
    prefetch = full_prefetch()
    del prefetch["laboratory"], prefetch["patient"]
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client, FHIR_SERVERS="")
    assert result.failed_keys == ["patient", "laboratory"]
    assert {result.outcomes[k].reason for k in result.failed_keys} == {"server not allowed"}
    assert server.requests == []


def test_no_fhir_server_and_missing_required_keys_is_412(client: FhirClient) -> None:
    prefetch = full_prefetch()
    del prefetch["conditions"], prefetch["laboratory"]
    with pytest.raises(PreconditionFailed) as info:
        run(make_request(prefetch), None, client, FHIR_SERVERS="*")
    assert info.value.missing_keys == ["conditions"]
    assert info.value.status == 412
    assert "no fhirServer" in info.value.detail
    body = info.value.body()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == ["prefetch.conditions"]


def test_no_prefetch_at_all_without_server_is_412(client: FhirClient) -> None:
    with pytest.raises(PreconditionFailed) as info:
        run(make_request(None), None, client)
    assert sorted(info.value.missing_keys) == sorted(REQUIRED)


def test_no_prefetch_is_all_fetched(server: FhirTestServer, client: FhirClient) -> None:
    with_prefetch = run(make_request(full_prefetch(), fhir_server=server.base_url), server, client)
    fetched = run(make_request(None, fhir_server=server.base_url, token=TOKEN), server, client)
    assert {o.status for o in fetched.outcomes.values()} == {"fetched"}
    assert {k: ids(v) for k, v in fetched.by_key.items()} == {
        k: ids(v) for k, v in with_prefetch.by_key.items()}
    assert sorted(server.paths()) == sorted(
        ["Patient/" + PATIENT_ID, "Observation", "Observation", "Condition", "MedicationRequest"])


@pytest.mark.parametrize(("behaviour", "reason"), [
    ({"fail_status": 500}, "http 500"),
    ({"fail_status": 401}, "http 401"),
    ({"html": True}, "non-FHIR response"),
])
def test_failed_optional_key_has_reason(server: FhirTestServer, client: FhirClient,
                                        behaviour: dict[str, Any], reason: str) -> None:
    for name, value in behaviour.items():
        setattr(server, name, value)
    prefetch = full_prefetch()
    del prefetch["laboratory"]
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert (result.outcomes["laboratory"].status, result.outcomes["laboratory"].reason) == ("failed", reason)
    assert result.failed_keys == ["laboratory"]


def test_all_required_failing_is_412(server: FhirTestServer, client: FhirClient) -> None:
    server.fail_status = 500
    prefetch = full_prefetch()
    del prefetch["antibodies"], prefetch["conditions"], prefetch["medications"]
    with pytest.raises(PreconditionFailed) as info:
        run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert info.value.missing_keys == ["antibodies", "conditions", "medications"]
    assert "every required query failed" in info.value.detail


def test_partial_failure_returns_failed_keys(server: FhirTestServer, client: FhirClient) -> None:
    server.override("Condition", status=500, body=operation_outcome("boom"))
    result = run(make_request(None, fhir_server=server.base_url), server, client)
    assert result.failed_keys == ["conditions"]
    assert result.outcomes["conditions"].reason == "http 500"
    assert {result.outcomes[k].status for k in TEMPLATES if k != "conditions"} == {"fetched"}


def test_required_keys_from_prefetch_count_as_available(server: FhirTestServer, client: FhirClient) -> None:
    server.fail_status = 500
    prefetch = full_prefetch()
    del prefetch["conditions"], prefetch["medications"]
    # antibodies came with the request, so not every required key is unavailable: no 412
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert result.failed_keys == ["conditions", "medications"]


# --------------------------------------------------------------------------------------------------
# paging
# --------------------------------------------------------------------------------------------------

def test_prefetch_bundle_with_next_link_is_paged(server: FhirTestServer, client: FhirClient) -> None:
    prefetch = full_prefetch()
    prefetch["laboratory"] = search(RECORD, LAB_PAGED_2,
                                    base_url=server.base_url)
    assert len(prefetch["laboratory"]["entry"]) == 2
    result = run(make_request(prefetch, fhir_server=server.base_url, token=TOKEN), server, client)
    outcome = result.outcomes["laboratory"]
    assert (outcome.status, outcome.complete, outcome.entries, outcome.pages) == ("prefetch", True, 9, 4)
    assert len(ids(result.by_key["laboratory"])) == 9
    assert [r.params["_offset"] for r in server.requests] == ["2", "4", "6", "8"]
    assert {r.authorization for r in server.requests} == {f"Bearer {TOKEN}"}


def test_fetched_search_is_paged(server: FhirTestServer, client: FhirClient) -> None:
    server.page_size = 3
    result = run(make_request(None, fhir_server=server.base_url, token=TOKEN), server, client)
    assert result.outcomes["laboratory"].entries == 9
    assert result.outcomes["laboratory"].pages == 3
    assert result.incomplete_keys == []
    assert {r.authorization for r in server.requests} == {f"Bearer {TOKEN}"}


def test_paging_is_bounded_by_pages(server: FhirTestServer, client: FhirClient) -> None:
    server.page_size = 2
    prefetch = full_prefetch()
    del prefetch["laboratory"]
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client, FHIR_MAX_PAGES=2)
    outcome = result.outcomes["laboratory"]
    assert (outcome.status, outcome.entries, outcome.pages, outcome.complete) == ("fetched", 4, 2, False)
    assert outcome.reason == "incomplete: page limit"
    assert result.incomplete_keys == ["laboratory"]
    assert result.failed_keys == []
    assert len(server.requests) == 2


def test_paging_is_bounded_by_entries(server: FhirTestServer, client: FhirClient) -> None:
    server.page_size = 4
    prefetch = full_prefetch()
    del prefetch["laboratory"]
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client, FHIR_MAX_ENTRIES=5)
    outcome = result.outcomes["laboratory"]
    assert (outcome.entries, outcome.complete, outcome.reason) == (5, False, "incomplete: entry limit")


def test_paging_prefetch_without_server_is_reported(client: FhirClient) -> None:
    prefetch = full_prefetch()
    prefetch["laboratory"] = search(RECORD, LAB_PAGED_2,
                                    base_url="https://ehr.example.org/fhir")
    result = run(make_request(prefetch), None, client)
    outcome = result.outcomes["laboratory"]
    assert (outcome.status, outcome.entries, outcome.complete) == ("prefetch", 2, False)
    assert outcome.reason == "incomplete: no fhirServer"
    assert result.incomplete_keys == ["laboratory"]


def test_next_link_off_server_is_not_followed(server: FhirTestServer, client: FhirClient) -> None:
    with FhirTestServer(RECORD) as other:
        prefetch = full_prefetch()
        prefetch["laboratory"] = search(RECORD, LAB_PAGED_2,
                                        base_url=other.base_url)
        result = run(make_request(prefetch, fhir_server=server.base_url, token=TOKEN), server, client,
                     FHIR_SERVERS=f"{server.base_url},{other.base_url}")
        assert other.requests == [] and server.requests == []
    assert result.outcomes["laboratory"].reason == "incomplete: next link off server"


def test_failed_page_keeps_what_was_there(server: FhirTestServer, client: FhirClient) -> None:
    prefetch = full_prefetch()
    prefetch["laboratory"] = search(RECORD, LAB_PAGED_2,
                                    base_url=server.base_url)
    server.fail_status = 500
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    outcome = result.outcomes["laboratory"]
    assert (outcome.status, outcome.entries, outcome.reason) == ("prefetch", 2, "incomplete: http 500")


def test_relative_next_link_is_resolved_against_fhir_server(server: FhirTestServer,
                                                           client: FhirClient) -> None:
    prefetch = full_prefetch()
    prefetch["laboratory"] = search(RECORD, LAB_PAGED_5)
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client)
    assert result.outcomes["laboratory"].entries == 9
    assert result.outcomes["laboratory"].complete


# --------------------------------------------------------------------------------------------------
# deadline, concurrency
# --------------------------------------------------------------------------------------------------

def test_slow_server_is_abandoned_at_the_deadline(server: FhirTestServer, client: FhirClient) -> None:
    server.delay = 10
    prefetch = full_prefetch()
    del prefetch["laboratory"], prefetch["patient"]
    started = time.monotonic()
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client, FHIR_DEADLINE_S=1)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert {(result.outcomes[k].status, result.outcomes[k].reason) for k in ("laboratory", "patient")} == {
        ("failed", "deadline")}
    assert result.failed_keys == ["patient", "laboratory"]


def test_slow_server_for_required_keys_is_412_within_deadline(server: FhirTestServer,
                                                              client: FhirClient) -> None:
    server.delay = 10
    started = time.monotonic()
    with pytest.raises(PreconditionFailed) as info:
        run(make_request(None, fhir_server=server.base_url), server, client, FHIR_DEADLINE_S=1)
    assert time.monotonic() - started < 1.5
    assert sorted(info.value.missing_keys) == sorted(REQUIRED)


def test_one_slow_key_does_not_hold_the_others(server: FhirTestServer, client: FhirClient) -> None:
    server.override("Observation?patient", delay=10)
    prefetch = full_prefetch()
    del prefetch["laboratory"], prefetch["conditions"]
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client, FHIR_DEADLINE_S=0.8)
    assert result.outcomes["conditions"].status == "fetched"
    assert result.outcomes["laboratory"].reason == "deadline"


def test_deadline_while_paging_prefetch_keeps_data(server: FhirTestServer, client: FhirClient) -> None:
    prefetch = full_prefetch()
    prefetch["laboratory"] = search(RECORD, LAB_PAGED_2,
                                    base_url=server.base_url)
    server.delay = 10
    result = run(make_request(prefetch, fhir_server=server.base_url), server, client, FHIR_DEADLINE_S=0.5)
    outcome = result.outcomes["laboratory"]
    assert (outcome.status, outcome.entries, outcome.reason) == ("prefetch", 2, "incomplete: deadline")


def test_missing_keys_are_fetched_concurrently(server: FhirTestServer, client: FhirClient) -> None:
    server.delay = 0.1
    result = run(make_request(None, fhir_server=server.base_url), server, client)
    assert {o.status for o in result.outcomes.values()} == {"fetched"}
    assert len(server.requests) == 5
    assert server.max_in_flight >= 3


# --------------------------------------------------------------------------------------------------
# no token, no PHI in logs
# --------------------------------------------------------------------------------------------------

def test_token_and_ids_never_logged(server: FhirTestServer, client: FhirClient,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.page_size = 2
    prefetch = full_prefetch()
    del prefetch["conditions"], prefetch["laboratory"]
    server.override("Condition", status=401, body=operation_outcome("expired token"))
    result = run(make_request(prefetch, fhir_server=server.base_url, token=TOKEN), server, client)
    assert result.failed_keys == ["conditions"]
    assert {r.authorization for r in server.requests} == {f"Bearer {TOKEN}"}
    assert len(server.requests) >= 5  # paging, every page with the token
    everything = "\n".join(r.getMessage() + repr(r.args) + str(r.exc_info) for r in caplog.records)
    assert TOKEN not in everything
    ours = [r for r in caplog.records if r.name.startswith("cds_service")]
    assert len(ours) == 1 and ours[0].levelno == logging.INFO
    line = ours[0].getMessage()
    assert PATIENT_ID not in line and "127.0.0.1" not in line and "http://" not in line
    assert "conditions=failed" in line and "laboratory=fetched" in line and "antibodies=prefetch" in line


def test_token_not_in_412_or_outcomes(server: FhirTestServer, client: FhirClient) -> None:
    server.fail_status = 401
    with pytest.raises(PreconditionFailed) as info:
        run(make_request(None, fhir_server=server.base_url, token=TOKEN), server, client)
    assert TOKEN not in str(info.value.body()) and PATIENT_ID not in str(info.value.body())
    assert server.base_url not in info.value.detail


REQUEST_TAG: contextvars.ContextVar[str] = contextvars.ContextVar("request_tag", default="none")


def test_workers_run_in_the_callers_context(server: FhirTestServer, client: FhirClient) -> None:
    """Per-request logging state (e.g. the redaction list) must reach what urllib3 logs in workers."""
    seen: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(REQUEST_TAG.get())

    handler = Capture(level=logging.DEBUG)
    urllib3_logger = logging.getLogger("urllib3")
    old_level = urllib3_logger.level
    urllib3_logger.addHandler(handler)
    urllib3_logger.setLevel(logging.DEBUG)
    token = REQUEST_TAG.set("request-42")
    try:
        run(make_request(None, fhir_server=server.base_url), server, client)
    finally:
        REQUEST_TAG.reset(token)
        urllib3_logger.removeHandler(handler)
        urllib3_logger.setLevel(old_level)
    assert seen and set(seen) == {"request-42"}
