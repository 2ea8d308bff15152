"""Prefetch as 2.0 clients send it, and the fetch path (issue 4): missing keys are queried on a
loopback FHIR server (``acceptance.ehr``), with the token, within the deadline, never off the
allow-list; a misbehaving server becomes a data note or a 412, never silence.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from acceptance.ehr import FhirServer
from acceptance.patients import jo1_tacrolimus_coordered, pl7_quantity_ro52_lineblot
from acceptance.support import (
    AMLODIPINE,
    HOOKS,
    LOINC,
    PATHS,
    PRIVIGEN_NDC11,
    REQUIRED,
    SELECT,
    SIGN,
    SNOMED,
    Record,
    call,
    card,
    check_response,
    coding,
    concept,
    draft,
    hook_request,
    ids,
    new_app,
    oo_body,
    prefetch_for,
    render,
    same_cards,
    table,
)


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def other_server() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fetch_client(clean_env: None, tmp_path_factory: pytest.TempPathFactory, fhir_server: FhirServer) -> FlaskClient:
    """An app that may query the loopback server (an explicit http:// prefix on the allow-list)."""
    app = new_app(tmp_path_factory.mktemp("fetch"), FHIR_SERVERS=f"{fhir_server.base}/", FHIR_DEADLINE_S=3.0)
    return app.test_client()


def test_optional_keys_missing_without_fhir_server_still_decides(client: FlaskClient,
                                                                 templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    optional = tuple(k for k in templates["order-sign"] if k not in REQUIRED and k != "safetyLabs")
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], omit=optional)
    same_cards(ids(call(client, body)), expected)


def test_safety_labs_missing_is_never_silent(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"],
                        omit=("safetyLabs", "laboratory"))
    cards = call(client, body)
    assert {c for c, _ in expected} <= {c for c, _ in ids(cards)}
    safety = card(cards, "ivig-safety")
    assert "renal function" in safety["detail"].lower() and "could not be" in safety["detail"].lower()


@pytest.mark.parametrize("missing", [("conditions",), ("myositisAntibodies",), REQUIRED])
def test_required_keys_missing_without_fhir_server_is_412(client: FlaskClient, templates: dict[str, dict[str, str]],
                                                          missing: tuple[str, ...]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    for hook in HOOKS:
        body = hook_request(hook, record, drafts, templates=templates[hook], omit=missing)
        oo_body(client.post(PATHS[hook], json=body), *missing)


def test_no_prefetch_at_all_without_fhir_server_is_412(client: FlaskClient,
                                                       templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    body = hook_request("order-select", record, drafts, templates=templates["order-select"], with_prefetch=False)
    oo_body(client.post(SELECT, json=body), *REQUIRED)


@pytest.mark.parametrize("shape", ["operation-outcome", "bundle-of-operation-outcomes"])
def test_operation_outcome_prefetch_without_fhir_server_is_412(
        client: FlaskClient, templates: dict[str, dict[str, str]], shape: str) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "exception", "diagnostics": "search failed"}]}
    value = outcome if shape == "operation-outcome" else {
        "resourceType": "Bundle", "type": "searchset", "entry": [{"resource": outcome}]}
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"])
    body["prefetch"]["conditions"] = value
    oo_body(client.post(SIGN, json=body), "conditions")


def test_empty_bundles_are_data_not_missing_keys(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    prefetch = {key: copy.deepcopy(empty) for key in templates["order-sign"] if key != "patient"}
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], prefetch=prefetch)
    assert call(client, body) == []


def test_non_ivig_order_never_412_and_never_queries(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                    templates: dict[str, dict[str, str]]) -> None:
    record, _, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    order = draft(record.pid, "acc-fast-amlo", AMLODIPINE)
    for hook in HOOKS:
        body = hook_request(hook, record, [order], templates=templates[hook], with_prefetch=False)
        assert call(fetch_client, body) == []
        body["fhirServer"] = fhir_server.base
        assert call(fetch_client, body) == []
    assert fhir_server.requests == []


def test_null_prefetch_means_no_data_and_no_query(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                 templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"],
                        prefetch={key: None for key in templates["order-sign"]}, fhirServer=fhir_server.base)
    assert call(fetch_client, body) == []  # no data: nobody in the clinical scope
    assert fhir_server.requests == [], "a null prefetch key must not be queried"


@pytest.mark.parametrize("missing", [("conditions",), REQUIRED, tuple()])
def test_missing_keys_are_fetched_with_the_token(
        fetch_client: FlaskClient, fhir_server: FhirServer, templates: dict[str, dict[str, str]],
        missing: tuple[str, ...]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    omit = missing or tuple(templates["order-sign"])  # () = no prefetch at all
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], omit=omit,
                        fhirServer=fhir_server.base,
                        fhirAuthorization={"access_token": "acc-secret-token", "token_type": "Bearer",
                                           "expires_in": 300, "scope": "patient/*.read",
                                           "subject": "ivig-cds", "patient": record.pid})
    same_cards(ids(call(fetch_client, body)), expected)
    assert fhir_server.requests, "missing keys must be queried"
    assert all(auth == "Bearer acc-secret-token" for _, auth in fhir_server.requests)
    queried = {path.split("?")[0].removeprefix("/fhir/").split("/")[0] for path, _ in fhir_server.requests}
    for key in omit:
        resource_type = templates["order-sign"][key].split("?")[0].split("/")[0]
        assert resource_type in queried, (key, queried)
    assert all(f"patient={record.pid}" in path or path.endswith(f"/Patient/{record.pid}")
               for path, _ in fhir_server.requests)


def test_sandbox_style_client_http_fhir_server_without_token(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                            templates: dict[str, dict[str, str]]) -> None:
    """The sandbox leaves unresolvable keys out, sends no fhirAuthorization, and its fhirServer may be http."""
    record, drafts, expected = jo1_tacrolimus_coordered()
    fhir_server.reset(record.resources)
    body = hook_request("order-select", record, drafts, templates=templates["order-select"],
                        omit=("medications", "pulmonaryFunction", "plasmaExchangeProcedures"),
                        fhirServer=fhir_server.base)
    same_cards(ids(call(fetch_client, body)), expected)
    assert all(auth is None for _, auth in fhir_server.requests)


def test_operation_outcome_prefetch_is_queried_again(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                     templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], fhirServer=fhir_server.base)
    body["prefetch"]["myositisAntibodies"] = {"resourceType": "OperationOutcome",
                                              "issue": [{"severity": "error", "code": "timeout"}]}
    same_cards(ids(call(fetch_client, body)), expected)
    assert any("/fhir/Observation?" in path for path, _ in fhir_server.requests)


def test_fhir_server_not_on_the_allow_list_is_never_contacted(client: FlaskClient, fhir_server: FhirServer,
                                                              templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], omit=("conditions",),
                        fhirServer=fhir_server.base)
    oo_body(client.post(SIGN, json=body), "conditions")
    assert fhir_server.requests == []


def _split_antibodies(record: Record, templates: dict[str, str]) -> dict[str, Any]:
    """The antibody key as a first page holding only the PL-7 result, with a next link."""
    prefetch = prefetch_for(record, templates)
    bundle = prefetch["myositisAntibodies"]
    pl7 = [e for e in bundle["entry"] if e["resource"]["id"] == "acc-pl7-q-ab"]
    assert len(bundle["entry"]) == 2 and pl7
    bundle["entry"] = pl7
    bundle["link"] = [{"relation": "self", "url": "https://ehr.acceptance.example.net/fhir/Observation?page=1"}]
    prefetch["laboratory"]["entry"] = [e for e in prefetch["laboratory"]["entry"]
                                       if e["resource"]["id"] != "acc-pl7-q-ro52"]
    return prefetch


def test_prefetch_page_with_next_link_and_no_fhir_server_uses_the_data(client: FlaskClient,
                                                                       templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    prefetch = _split_antibodies(record, templates["order-sign"])
    prefetch["myositisAntibodies"]["link"].append(
        {"relation": "next", "url": "https://ehr.acceptance.example.net/fhir/Observation?page=2"})
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], prefetch=prefetch)
    cards = call(client, body)
    same_cards(ids(cards), table(ild=True, pl7=True))  # Ro52 was on the page that could not be read
    assert all("could not be" in c["detail"] for c in cards), "an incomplete antibody key must be noted"


def test_prefetch_next_link_is_followed_on_the_fhir_server(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                           templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    prefetch = _split_antibodies(record, templates["order-sign"])
    ro52_query = render(templates["order-sign"]["myositisAntibodies"], record.pid).replace(
        "Observation?", "Observation?_id=acc-pl7-q-ro52&")
    prefetch["myositisAntibodies"]["link"].append({"relation": "next", "url": f"{fhir_server.base}/{ro52_query}"})
    fhir_server.resources = [r for r in record.resources if r["id"] == "acc-pl7-q-ro52"]
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], prefetch=prefetch,
                        fhirServer=fhir_server.base)
    same_cards(ids(call(fetch_client, body)), expected)
    assert len(fhir_server.requests) == 1


def test_fetched_searchset_is_paged_through(fetch_client: FlaskClient, fhir_server: FhirServer,
                                            templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources, page_size=1)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"],
                        omit=("myositisAntibodies", "laboratory"), fhirServer=fhir_server.base)
    same_cards(ids(call(fetch_client, body)), expected)
    assert any("_acc_page=1" in path for path, _ in fhir_server.requests)


def _failing(fetch_client: FlaskClient, fhir_server: FhirServer, templates: dict[str, dict[str, str]],
             faults: dict[str, str], omit: tuple[str, ...]) -> Any:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources, faults=faults)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], omit=omit,
                        fhirServer=fhir_server.base)
    return fetch_client.post(SIGN, json=body), body


@pytest.mark.parametrize("fault", ["500", "401", "html"])
def test_medications_query_failing_is_a_data_note_not_silence(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                              templates: dict[str, dict[str, str]],
                                                              fault: str) -> None:
    response, body = _failing(fetch_client, fhir_server, templates, {"/MedicationRequest?": fault},
                              ("medications",))
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = check_response(response.get_json(), body)
    same_cards(ids(cards), table(ild=True, pl7=True, ro52=True))  # therapy unknown: none found
    detail = card(cards, "ivig-not-first-line")["detail"].lower()
    assert "could not be" in detail and "medication" in detail


def test_safety_labs_query_failing_is_a_data_note(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                  templates: dict[str, dict[str, str]]) -> None:
    response, body = _failing(fetch_client, fhir_server, templates, {"2160-0": "500"}, ("safetyLabs",))
    assert response.status_code == 200
    safety = card(check_response(response.get_json(), body), "ivig-safety")["detail"].lower()
    assert "renal function" in safety and "could not be" in safety


def test_every_required_query_failing_is_412(fetch_client: FlaskClient, fhir_server: FhirServer,
                                            templates: dict[str, dict[str, str]]) -> None:
    faults = {"/Condition?": "500", "/MedicationRequest?": "html", "loinc.org%7C11565-9": "500",
              "loinc.org|11565-9": "500"}
    response, _ = _failing(fetch_client, fhir_server, templates, faults, REQUIRED)
    oo_body(response, *REQUIRED)


def test_slow_server_is_abandoned_at_the_deadline(clean_env: None, tmp_path: Path, fhir_server: FhirServer,
                                                 templates: dict[str, dict[str, str]]) -> None:
    quick = new_app(tmp_path, FHIR_SERVERS=f"{fhir_server.base}/", FHIR_DEADLINE_S=0.5).test_client()
    started = time.perf_counter()
    response, body = _failing(quick, fhir_server, templates, {"2160-0": "sleep:4"}, ("safetyLabs",))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert elapsed < 1.5, f"deadline 0.5 s, answered after {elapsed:.2f} s"
    safety = card(check_response(response.get_json(), body), "ivig-safety")["detail"].lower()
    assert "could not be" in safety


def test_redirect_off_the_allowed_server_is_not_followed(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                          other_server: FhirServer,
                                                          templates: dict[str, dict[str, str]]) -> None:
    other_server.reset([])
    response, _ = _failing(fetch_client, fhir_server, templates,
                           {"/Condition?": f"redirect:{other_server.origin}"},
                           ("conditions",))
    assert response.status_code in (200, 412)
    assert other_server.requests == []


def test_next_link_off_the_allowed_server_is_not_followed(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                          other_server: FhirServer,
                                                          templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    other_server.reset(record.resources)
    prefetch = _split_antibodies(record, templates["order-sign"])
    prefetch["myositisAntibodies"]["link"].append(
        {"relation": "next", "url": f"{other_server.base}/Observation?patient={record.pid}"})
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], prefetch=prefetch,
                        fhirServer=fhir_server.base)
    same_cards(ids(call(fetch_client, body)), table(ild=True, pl7=True))
    assert other_server.requests == []


def test_patient_id_with_dots_and_dashes_is_fetched_correctly(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                              templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = jo1_tacrolimus_coordered()
    old = record.pid
    record.pid = "Acc.Pat-0042.x"
    record.patient["id"] = record.pid
    for resource in record.resources:
        if isinstance(resource.get("subject"), dict):
            resource["subject"] = {"reference": f"Patient/{record.pid}"}
    for d in drafts:
        d["subject"] = {"reference": f"Patient/{record.pid}"}
    assert old != record.pid
    fhir_server.reset(record.resources)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], with_prefetch=False,
                        fhirServer=fhir_server.base + "/")
    same_cards(ids(call(fetch_client, body)), expected)


def test_no_patient_data_or_token_in_logs(fetch_client: FlaskClient, fhir_server: FhirServer,
                                          templates: dict[str, dict[str, str]],
                                          caplog: pytest.LogCaptureFixture) -> None:
    record = Record("acc-phi-Q7Z", "Philippa", "Geheimnisvoll")
    record.obs("acc-phi-Q7Z-pl7", concept(coding(LOINC, "33772-5"), text="PL-7 for Philippa Geheimnisvoll"),
               valueString="Positive")
    record.cond("acc-phi-Q7Z-ild", concept(coding(SNOMED, "233703007"), text="ILD (Geheimnisvoll family)"))
    record.renal_ok()
    ivig = draft(record.pid, "acc-phi-Q7Z-ivig", PRIVIGEN_NDC11)
    fhir_server.reset(record.resources, faults={"/Procedure?": "500"})
    caplog.set_level("DEBUG")
    for hook in HOOKS:
        body = hook_request(hook, record, [ivig], templates=templates[hook], with_prefetch=False,
                            fhirServer=fhir_server.base,
                            fhirAuthorization={"access_token": "acc-phi-token-8c1e", "token_type": "Bearer",
                                               "expires_in": 60, "scope": "patient/*.read", "subject": "c"})
        same_cards(ids(call(fetch_client, body)), table(ild=True, pl7=True))
        bad = dict(body, hookInstance="acc-phi-Q7Z Geheimnisvoll")
        assert fetch_client.post(PATHS[hook], json=bad).status_code == 400
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records
    for secret in ("acc-phi-Q7Z", "Geheimnisvoll", "Philippa", "acc-phi-token-8c1e", "1968-04-09"):
        assert secret not in text, f"{secret} was logged"
