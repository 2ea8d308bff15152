"""No PHI and no secret in any log line, at any level, from any logger.

Every fixture is driven through both hooks (with prefetch), through the FHIR fallback (no prefetch:
the loopback FHIR server of ``tests/fhir_server.py`` answers, called with a bearer access token),
with ``AUTH=jwt`` (client JWTs, accepted and refused), and through the error paths (400, 412, a FHIR
server failing, an unexpected exception).  Every logger is at DEBUG (root, ``cds_service.*``,
``urllib3``, ``werkzeug``); the output is captured twice: pytest's ``caplog`` and a plain
``StreamHandler`` on the root logger.  Neither may contain a patient id, a patient's name,
identifier or birth date, an encounter id, the FHIR access token, or a client JWT.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from fhir_server import FhirTestServer
from flask import Flask

from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture, record_resources, shift_fixture
from cds_service.devtools.keys import mint_token, new_key_pair
from cds_service.engine.services import default_services

HOOKS = ("order-select", "order-sign")
SERVICE_FOR_HOOK = {s.hook: s.id for s in default_services().values()}
ACCESS_TOKEN = "fhir-at-5b0f9c3e-77d2-4d0a-9d5e-secret"  # noqa: S105 - a test secret that must not leak
ISSUER = "https://ehr.phi-test.example.org"
KID = "phi-es384"
LOGGERS = ("", "cds_service", "cds_service.http.api", "cds_service.http.app", "cds_service.engine.fhir",
           "cds_service.http.auth",
           "cds_service.engine.runtime", "cds_service.engine.store", "urllib3", "urllib3.connectionpool", "werkzeug",
           "requests", "sqlalchemy", "flask.app")


@dataclass
class Secrets:
    """What must never be logged, with the fixture each value comes from."""

    exact: dict[str, str] = field(default_factory=dict)  # value -> where from (substring match)
    words: dict[str, str] = field(default_factory=dict)  # names: whole-word match

    def add(self, value: Any, source: str, *, word: bool = False) -> None:
        if isinstance(value, str) and len(value) >= 3:
            (self.words if word else self.exact)[value] = source

    def found_in(self, text: str) -> list[str]:
        leaks = [f"{source}: {value!r}" for value, source in self.exact.items() if value in text]
        leaks += [f"{source}: {value!r}" for value, source in self.words.items()
                  if re.search(rf"(?<![A-Za-z]){re.escape(value)}(?![A-Za-z])", text)]
        return leaks


def patient_secrets(fixture: dict[str, Any], secrets: Secrets) -> None:
    name = fixture["name"]
    secrets.add(fixture["patientId"], f"{name} patient id")
    secrets.add(fixture.get("encounterId"), f"{name} encounter id")
    for resource in record_resources(fixture):
        if resource.get("resourceType") != "Patient":
            continue
        secrets.add(resource.get("id"), f"{name} Patient.id")
        secrets.add(resource.get("birthDate"), f"{name} birth date")
        for human in resource.get("name", []):
            for given in human.get("given", []):
                secrets.add(given, f"{name} given name", word=True)
            secrets.add(human.get("family"), f"{name} family name", word=True)
            secrets.add(human.get("text"), f"{name} name text")
        for identifier in resource.get("identifier", []):
            secrets.add(identifier.get("value"), f"{name} identifier")


@dataclass
class Capture:
    stream: io.StringIO
    caplog: pytest.LogCaptureFixture

    def text(self) -> str:
        records = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {r.stack_info or ''}"
                            for r in self.caplog.records)
        return self.stream.getvalue() + "\n" + self.caplog.text + "\n" + records


@pytest.fixture
def capture(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], Capture]]:
    """``capture()`` after the app exists (create_app sets logger levels): everything at DEBUG."""
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    handlers: list[logging.Handler] = []

    def start() -> Capture:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        logging.getLogger().addHandler(handler)
        handlers.append(handler)
        for name in LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
            caplog.set_level(logging.DEBUG, logger=name or None)
        return Capture(stream, caplog)

    yield start
    for handler in handlers:
        logging.getLogger().removeHandler(handler)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def served() -> Iterator[FhirTestServer]:
    with FhirTestServer() as server:
        yield server


def _with_token(body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["fhirAuthorization"] = {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "ivig-cds"}
    return body


def _secrets_for_all_fixtures() -> Secrets:
    secrets = Secrets()
    secrets.add(ACCESS_TOKEN, "FHIR access token")
    for name in list_fixtures():
        patient_secrets(load_fixture(name), secrets)
    return secrets


def _assert_no_leak(capture: Capture, secrets: Secrets, *, expect: tuple[str, ...] = ()) -> str:
    text = capture.text()
    for marker in expect:  # the capture really saw the traffic
        assert marker in text, f"expected {marker!r} in the captured logs"
    leaks = secrets.found_in(text)
    assert not leaks, "PHI or secrets in the logs:\n" + "\n".join(leaks[:20]) + "\n---\n" + "\n".join(
        line for line in text.splitlines() if secrets.found_in(line))[:3000]
    return text


# -- every fixture, both hooks, with prefetch and through the FHIR fallback ---------------------------

def test_every_fixture_with_prefetch_and_from_the_fhir_server(
        make_app: Callable[..., Flask], capture: Callable[[], Capture], served: FhirTestServer) -> None:
    app = make_app(CONTENT_POLICY="all", LOG_LEVEL="DEBUG", FHIR_SERVERS=served.base_url)
    captured = capture()
    client = app.test_client()
    secrets = _secrets_for_all_fixtures()
    statuses: dict[int, int] = {}
    for name in list_fixtures():
        fixture = load_fixture(name)
        served.resources = record_resources(shift_fixture(fixture))
        for hook in HOOKS:
            path = f"/cds-services/{SERVICE_FOR_HOOK[hook]}"
            for body in (build_request(fixture, hook),
                         _with_token(build_request(fixture, hook, prefetch=False, fhir_server=served.base_url))):
                response = client.post(path, json=body)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert set(statuses) == {200}, statuses
    assert served.requests, "the no-prefetch calls never reached the FHIR server"
    assert {r.authorization for r in served.requests} == {f"Bearer {ACCESS_TOKEN}"}
    app.extensions["cds_runtime"].store.flush()
    _assert_no_leak(captured, secrets, expect=("hook call", "urllib3", "cds_service.engine.fhir"))


def test_fhir_server_failures_and_paging_are_logged_without_phi(
        make_app: Callable[..., Flask], capture: Callable[[], Capture], served: FhirTestServer) -> None:
    app = make_app(CONTENT_POLICY="all", LOG_LEVEL="DEBUG", FHIR_SERVERS=served.base_url, FHIR_DEADLINE_S=0.5)
    captured = capture()
    client = app.test_client()
    name = "pl7-ro52-rpild"
    fixture = load_fixture(name)
    secrets = _secrets_for_all_fixtures()
    served.resources = record_resources(shift_fixture(fixture))
    body = _with_token(build_request(fixture, "order-sign", prefetch=False, fhir_server=served.base_url))
    path = f"/cds-services/{SERVICE_FOR_HOOK['order-sign']}"
    served.page_size = 1
    assert client.post(path, json=body).status_code == 200
    served.reset()
    served.fail_status = 500
    assert client.post(path, json=body).status_code in (200, 412)
    served.reset()
    served.html = True
    assert client.post(path, json=body).status_code in (200, 412)
    served.reset()
    served.fail_status = 401
    assert client.post(path, json=body).status_code in (200, 412)
    served.reset()
    served.override("Observation?", status=200, body="{not json", content_type="application/fhir+json")
    assert client.post(path, json=body).status_code in (200, 412)
    served.reset()
    served.delay = 2.0  # past the deadline
    assert client.post(path, json=body).status_code in (200, 412)
    _assert_no_leak(captured, secrets, expect=("urllib3",))


def test_a_patient_id_that_needs_url_encoding_is_redacted_in_every_form(
        make_app: Callable[..., Flask], capture: Callable[[], Capture], served: FhirTestServer) -> None:
    """The id travels percent-encoded in FHIR query URLs (urllib3 logs them at DEBUG)."""
    app = make_app(CONTENT_POLICY="all", LOG_LEVEL="DEBUG", FHIR_SERVERS=served.base_url)
    captured = capture()
    fixture = load_fixture("pl7-ro52-rpild")
    served.resources = record_resources(shift_fixture(fixture))
    patient_id = "MRN^4711 Doe/Jane&x=1"
    body = _with_token(build_request(fixture, "order-sign", prefetch=False, fhir_server=served.base_url))
    body["context"]["patientId"] = patient_id
    response = app.test_client().post(f"/cds-services/{SERVICE_FOR_HOOK['order-sign']}", json=body)
    assert response.status_code in (200, 412)
    assert served.requests
    secrets = Secrets()
    for form in {patient_id, quote(patient_id, safe=""), quote(patient_id), quote_plus(patient_id)}:
        secrets.add(form, "patient id (as sent, or percent-encoded)")
    _assert_no_leak(captured, secrets, expect=("urllib3",))


# -- AUTH=jwt: client tokens -----------------------------------------------------------------------

def test_client_jwts_are_never_logged(make_app: Callable[..., Flask], capture: Callable[[], Capture],
                                      served: FhirTestServer) -> None:
    private_pem, jwk = new_key_pair("ES384", KID)
    stranger_pem, _ = new_key_pair("ES384", KID)
    app = make_app(AUTH="jwt", TRUSTED_ISSUERS=json.dumps({ISSUER: {"jwks": {"keys": [jwk]}}}),
                   CONTENT_POLICY="all", LOG_LEVEL="DEBUG", FHIR_SERVERS=served.base_url)
    captured = capture()
    client = app.test_client()
    secrets = _secrets_for_all_fixtures()

    def bearer(path: str, key: bytes = private_pem, aud: str | None = None) -> dict[str, str]:
        token = mint_token(key, alg="ES384", kid=KID, iss=ISSUER, aud=aud or "http://localhost" + path)
        secrets.add(token, "client JWT")
        secrets.add(token.rsplit(".", 1)[1], "client JWT signature")
        return {"Authorization": f"Bearer {token}"}

    statuses: list[int] = []
    for name in list_fixtures()[:6]:
        fixture = load_fixture(name)
        served.resources = record_resources(shift_fixture(fixture))
        for hook in HOOKS:
            path = f"/cds-services/{SERVICE_FOR_HOOK[hook]}"
            statuses.append(client.post(path, json=build_request(fixture, hook), headers=bearer(path)).status_code)
            no_prefetch = _with_token(build_request(fixture, hook, prefetch=False, fhir_server=served.base_url))
            statuses.append(client.post(path, json=no_prefetch, headers=bearer(path)).status_code)
            refused = [client.post(path, json=build_request(fixture, hook), headers=headers) for headers in (
                bearer(path, key=stranger_pem), bearer(path, aud="https://elsewhere.example/x"),
                {"Authorization": "Bearer " + "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."},
                {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="})]
            assert {r.status_code for r in refused} == {401}
        replayed = bearer("/cds-services")
        assert client.get("/cds-services", headers=replayed).status_code == 200
        assert client.get("/cds-services", headers=replayed).status_code == 401  # jti replay
    assert set(statuses) == {200}, statuses
    _assert_no_leak(captured, secrets, expect=("client JWT refused", "hook call"))


# -- error paths ------------------------------------------------------------------------------------

def test_error_paths_are_logged_without_phi(make_app: Callable[..., Flask], capture: Callable[[], Capture]) -> None:
    app = make_app(CONTENT_POLICY="all", LOG_LEVEL="DEBUG")
    captured = capture()
    client = app.test_client()
    secrets = _secrets_for_all_fixtures()
    fixture = load_fixture("pl7-ro52-rpild")
    select = f"/cds-services/{SERVICE_FOR_HOOK['order-select']}"
    good = _with_token(build_request(fixture, "order-select", fhir_server="https://fhir.example.org/r4"))
    patient_id = fixture["patientId"]

    bad_selection = copy.deepcopy(good)
    bad_selection["context"]["selections"] = [f"Patient {patient_id}"]
    wrong_hook = dict(copy.deepcopy(good), hook=f"order-sign-{patient_id}")
    bad_token_type = copy.deepcopy(good)
    bad_token_type["fhirAuthorization"]["token_type"] = ACCESS_TOKEN
    no_prefetch = _with_token(build_request(fixture, "order-select", prefetch=False,
                                            fhir_server="https://not-allowed.example.org/r4"))
    answers = [client.post(select, json=body).status_code
               for body in (bad_selection, wrong_hook, bad_token_type, no_prefetch)]
    answers.append(client.post("/cds-services/" + patient_id, json=good).status_code)
    answers.append(client.post(select, data=json.dumps(good)[:-5], content_type="application/json").status_code)
    answers.append(client.post(select + "/feedback", json={"feedback": [
        {"card": patient_id, "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z",
         "overrideReason": {"userComment": f"{patient_id} {ACCESS_TOKEN}"}}]}).status_code)
    assert 400 in answers and 404 in answers and 412 in answers, answers
    _assert_no_leak(captured, secrets)


def test_an_unexpected_exception_is_logged_without_phi(
        make_app: Callable[..., Flask], capture: Callable[[], Capture], monkeypatch: pytest.MonkeyPatch) -> None:
    """The second line of defence: a careless exception message carrying the patient's data (a
    resource, the token) is redacted from the traceback the 500 handler logs."""
    from cds_service.clinical import rules

    fixture = load_fixture("pl7-ro52-rpild")
    body = _with_token(build_request(fixture, "order-select", fhir_server="https://fhir.example.org/r4"))
    patient = next(r for r in record_resources(fixture) if r.get("resourceType") == "Patient")

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"cannot decide for Patient/{fixture['patientId']} token={ACCESS_TOKEN} "
                         f"resource={json.dumps(patient)}")

    monkeypatch.setattr(rules, "decide", explode)
    app = make_app(CONTENT_POLICY="all", LOG_LEVEL="DEBUG")
    app.testing = False  # let the app's error handler answer (and log) the exception
    captured = capture()
    response = app.test_client().post(f"/cds-services/{SERVICE_FOR_HOOK['order-select']}", json=body)
    assert response.status_code == 500
    assert response.get_json()["error"] == "internal_error"
    secrets = Secrets()
    secrets.add(ACCESS_TOKEN, "FHIR access token")
    patient_secrets(fixture, secrets)
    _assert_no_leak(captured, secrets, expect=("ValueError", "explode"))  # the stack is still logged


# -- what is stored -----------------------------------------------------------------------------------

def test_audit_rows_hold_no_patient_id(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = make_app(CONTENT_POLICY="all", AUDIT_KEY="phi-test-audit-key")
    client = app.test_client()
    secrets = _secrets_for_all_fixtures()
    for name in list_fixtures():
        fixture = load_fixture(name)
        for hook in HOOKS:
            path = f"/cds-services/{SERVICE_FOR_HOOK[hook]}"
            assert client.post(path, json=_with_token(build_request(
                fixture, hook, fhir_server="https://fhir.example.org/r4"))).status_code == 200
    store = app.extensions["cds_runtime"].store
    assert store.flush()
    rows = store.audit_rows()
    assert len(rows) >= 2 * len(list_fixtures())
    assert all(row.get("patient_hmac") for row in rows if row.get("status_code") == 200)
    leaks = secrets.found_in(json.dumps(rows, default=str))
    assert not leaks, leaks
    database = tmp_path / "ivig-cds.sqlite3"
    assert database.is_file()
    with sqlite3.connect(database) as connection:
        dump = "\n".join(connection.iterdump())
    assert "patient_hmac" in dump
    assert not secrets.found_in(dump), secrets.found_in(dump)[:5]
