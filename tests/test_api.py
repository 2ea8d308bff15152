"""The HTTP surface (issue 2): discovery, hook endpoints, errors, CORS, settings, health.

Everything goes through the Flask test client; nothing here calls a view function directly.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient

from cds_service import errors
from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.devtools.keys import mint_token, new_key_pair
from cds_service.protocol.schema import first_error
from cds_service.settings import SettingsError

EXAMPLES = Path(__file__).parent / "spec_examples"
SELECT = "/cds-services/ivig-order-select"
SIGN = "/cds-services/ivig-order-sign"
HOOK_PATHS = {"order-select": SELECT, "order-sign": SIGN}
ALLOWED_TOKENS = {"context.patientId", "context.userId", "context.encounterId"}
ORIGIN = "https://sandbox.cds-hooks.org"
ISS = "https://ehr.example.org"
CLOSED_PORT_URL = "postgresql+psycopg://u@127.0.0.1:1/x"


def example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_error(response: Any, status: int, *detail_fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"]
    for fragment in detail_fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def post_hook(client: FlaskClient, path: str, body: Any) -> dict[str, Any]:
    """POST a hook call; assert 200 and a response that validates against response.json."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    payload: dict[str, Any] = response.get_json()
    assert first_error("response.json", payload) is None, first_error("response.json", payload)
    return payload


def eager_request(hook: str = "order-select") -> dict[str, Any]:
    """What the sandbox sends on opening the order screen: a draft with no medication, no intent."""
    draft = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft",
             "subject": {"reference": "Patient/p-1"}}
    context: dict[str, Any] = {"userId": "Practitioner/COREPRACTITIONER1", "patientId": "p-1",
                               "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]}}
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/draft-1"]
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}


def amoxicillin_request(hook: str) -> dict[str, Any]:
    draft = {"resourceType": "MedicationRequest", "id": "amox-1", "status": "draft", "intent": "order",
             "medicationCodeableConcept": {"text": "Amoxicillin 500 mg capsule"},
             "subject": {"reference": "Patient/p-1"}}
    context: dict[str, Any] = {"userId": "Practitioner/1", "patientId": "p-1",
                               "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]}}
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/amox-1"]
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}


# --- discovery -------------------------------------------------------------------------------------


def test_discovery_validates_and_lists_both_services(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    body = response.get_json()
    assert first_error("discovery.json", body) is None
    services = {s["id"]: s for s in body["services"]}
    assert set(services) == {"ivig-order-select", "ivig-order-sign"}
    assert services["ivig-order-select"]["hook"] == "order-select"
    assert services["ivig-order-sign"]["hook"] == "order-sign"
    for service in services.values():
        for key in ("hook", "id", "title", "description", "usageRequirements"):
            assert isinstance(service[key], str) and service[key].strip(), key
        assert service["prefetch"], "prefetch templates expected"


def test_discovery_prefetch_templates_use_only_2_0_tokens_and_no_repeated_parameter(
        client: FlaskClient) -> None:
    services = client.get("/cds-services").get_json()["services"]
    for service in services:
        for key, template in service["prefetch"].items():
            tokens = set(re.findall(r"\{\{\s*([^}]*?)\s*\}\}", template))
            assert tokens, f"{service['id']}.{key} has no context token"
            assert tokens <= ALLOWED_TOKENS, (service["id"], key, tokens)
            path, _, query = template.partition("?")
            assert re.fullmatch(r"[A-Z][A-Za-z]+(/\{\{context\.patientId\}\})?", path), template
            names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
            assert len(names) == len(set(names)), f"repeated parameter in {service['id']}.{key}: {template}"


def test_discovery_prefetch_covers_the_issue_keys(client: FlaskClient,
                                                 templates: Callable[[str], dict[str, str]]) -> None:
    wanted = {"patient", "myositisAntibodies", "conditions", "medications", "safetyLabs",
              "pulmonaryFunction", "plasmaExchangeOrders", "plasmaExchangeProcedures"}
    for service in client.get("/cds-services").get_json()["services"]:
        assert wanted <= set(service["prefetch"]), service["id"]
        assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        # Served as built from the value sets (the fixtures fill prefetch from the same templates).
        assert service["prefetch"] == templates(service["hook"])
        antibodies = service["prefetch"]["myositisAntibodies"]
        assert "http://loinc.org|33772-5" in antibodies  # anti-PL-7, from cards/valuesets/antibody-pl7.json


# --- the silent path -------------------------------------------------------------------------------


def test_spec_order_select_example_gets_no_cards(client: FlaskClient) -> None:
    body = post_hook(client, SELECT, example("order-select-request.json"))
    assert body == {"cards": []}


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_non_ivig_order_fetches_nothing_from_a_dead_server(make_app: Callable[..., Flask], hook: str) -> None:
    port = closed_port()
    client = make_app(FHIR_SERVERS=f"http://127.0.0.1:{port}").test_client()
    request = amoxicillin_request(hook)
    request["fhirServer"] = f"http://127.0.0.1:{port}/fhir"
    started = time.perf_counter()
    body = post_hook(client, HOOK_PATHS[hook], request)
    assert body == {"cards": []}  # a fetch would have failed the required keys: 412
    assert time.perf_counter() - started < 1.5  # well under FHIR_DEADLINE_S even on a loaded machine


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_non_ivig_order_opens_no_connection(make_app: Callable[..., Flask], hook: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = make_app(FHIR_SERVERS=base, FHIR_DEADLINE_S=0.3).test_client()
        request = amoxicillin_request(hook)
        request["fhirServer"] = base + "/fhir"
        request["fhirAuthorization"] = {"access_token": "t0ken-value", "token_type": "Bearer",
                                        "expires_in": 300, "scope": "patient/*.read", "subject": "cds"}
        assert post_hook(client, HOOK_PATHS[hook], request) == {"cards": []}
        listener.settimeout(0.1)
        with pytest.raises(TimeoutError):
            listener.accept()
        # Control: an IVIG order with the same server does connect (and gives up at the deadline).
        ivig = build_request(load_fixture("pl7-ro52-rpild"), hook, prefetch=False, fhir_server=base + "/fhir")
        assert client.post(HOOK_PATHS[hook], json=ivig).status_code == 412
        listener.settimeout(1.0)
        connection, _ = listener.accept()
        connection.close()


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_non_ivig_order_never_looks_at_prefetch(client: FlaskClient, hook: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import cds_service.engine.pipeline as pipeline_module
    from cds_service.clinical.facts import FactReader

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("prefetch was read for a non-IVIG order")

    monkeypatch.setattr(pipeline_module, "gather", must_not_run)
    monkeypatch.setattr(FactReader, "extract", must_not_run)
    request = amoxicillin_request(hook)
    request["prefetch"] = {
        "conditions": {"resourceType": "Bundle", "entry": "not a list"},
        "myositisAntibodies": {"resourceType": 42, "entry": [{"resource": {"code": []}}]},
        "medications": {"junk": [None, {"deeper": {"resourceType": None}}]},
        "patient": None,
    }
    assert post_hook(client, HOOK_PATHS[hook], request) == {"cards": []}


def test_eager_order_select_with_empty_draft_is_silent(client: FlaskClient) -> None:
    assert post_hook(client, SELECT, eager_request("order-select")) == {"cards": []}


def test_eager_order_select_draft_with_category_object_is_silent(client: FlaskClient) -> None:
    request = eager_request("order-select")
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    draft["category"] = {"coding": [{"code": "outpatient"}]}
    draft["reasonCode"] = {"text": "reason chosen first"}
    assert post_hook(client, SELECT, request) == {"cards": []}


def test_order_sign_without_selections_is_accepted(client: FlaskClient) -> None:
    request = eager_request("order-sign")
    assert "selections" not in request["context"] and "encounterId" not in request["context"]
    assert post_hook(client, SIGN, request) == {"cards": []}


def test_unknown_fields_and_extensions_are_accepted(client: FlaskClient) -> None:
    request = eager_request("order-select")
    request["extension"] = {"com.example.client": {"x": 1}}
    request["somethingNew"] = True
    request["context"]["extension"] = {"com.example.ctx": "y"}
    assert post_hook(client, SELECT, request) == {"cards": []}


@pytest.mark.parametrize("policy", ["all", "approved-only"])
def test_ivig_fixture_response_validates(make_app: Callable[..., Flask], policy: str) -> None:
    """The loud path too: an IVIG call answers cards (or none, when content is withheld) that
    validate against response.json."""
    client = make_app(CONTENT_POLICY=policy).test_client()
    body = post_hook(client, SIGN, build_request(load_fixture("pl7-ro52-rpild"), "order-sign"))
    if policy == "all":
        assert body["cards"]


# --- errors ----------------------------------------------------------------------------------------


def test_invalid_json_is_400(client: FlaskClient) -> None:
    response = client.post(SELECT, data=b'{"hook": "order-select",', content_type="application/json")
    assert_error(response, 400)


def test_body_that_is_not_utf8_is_400(client: FlaskClient) -> None:
    assert_error(client.post(SELECT, data=b'{"hook": "\xff"}', content_type="application/json"), 400)


def test_empty_body_is_400(client: FlaskClient) -> None:
    assert_error(client.post(SELECT, data=b"", content_type="application/json"), 400)


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_json_is_400_not_500(client: FlaskClient, depth: int) -> None:
    request = eager_request()
    body = json.dumps(request)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    assert_error(client.post(SELECT, data=body, content_type="application/json"), 400)


def test_json_that_is_not_an_object_is_400(client: FlaskClient) -> None:
    assert_error(client.post(SELECT, json=[1, 2, 3]), 400)


def test_wrong_shape_is_400_with_the_json_path(client: FlaskClient) -> None:
    request = eager_request("order-select")
    del request["context"]["patientId"]
    assert_error(client.post(SELECT, json=request), 400, "$.context", "patientId")


def test_wrong_shape_deep_in_draft_orders_names_the_path(client: FlaskClient) -> None:
    request = eager_request("order-select")
    request["context"]["draftOrders"]["entry"][0] = {"fullUrl": "urn:uuid:1"}
    assert_error(client.post(SELECT, json=request), 400, "$.context.draftOrders.entry[0]", "resource")


def test_bad_hook_instance_is_400_with_the_path(client: FlaskClient) -> None:
    request = eager_request("order-select")
    request["hookInstance"] = "not-a-uuid"
    assert_error(client.post(SELECT, json=request), 400, "$.hookInstance")


def test_wrong_hook_for_the_service_is_400(client: FlaskClient) -> None:
    request = eager_request("order-sign")
    body = assert_error(client.post(SELECT, json=request), 400, "hook")
    assert body["error"]


def test_fhir_authorization_without_fhir_server_is_400(client: FlaskClient) -> None:
    request = eager_request("order-select")
    request["fhirAuthorization"] = {"access_token": "secret-token-value-123", "token_type": "Bearer",
                                    "expires_in": 300, "scope": "patient/*.read", "subject": "cds"}
    body = assert_error(client.post(SELECT, json=request), 400, "fhirServer")
    assert "secret-token-value-123" not in json.dumps(body)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(client: FlaskClient, content_type: str | None) -> None:
    data = json.dumps(eager_request("order-select"))
    if content_type is None:
        response = client.post(SELECT, data=data)
    else:
        response = client.post(SELECT, data=data, content_type=content_type)
    assert_error(response, 415)


def test_json_content_type_with_charset_is_accepted(client: FlaskClient) -> None:
    response = client.post(SELECT, data=json.dumps(eager_request("order-select")),
                           content_type="application/json; charset=utf-8")
    assert response.status_code == 200


def test_unknown_service_is_404(client: FlaskClient) -> None:
    assert_error(client.post("/cds-services/no-such-service", json=eager_request()), 404)


def test_feedback_for_unknown_service_is_404(client: FlaskClient) -> None:
    assert_error(client.post("/cds-services/no-such-service/feedback",
                             json=example("feedback-accepted.json")), 404)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_on_hook_endpoint_is_405(client: FlaskClient, method: str) -> None:
    response = client.open(SELECT, method=method)
    assert_error(response, 405)
    assert "POST" in response.headers.get("Allow", "")


@pytest.mark.parametrize("method,path", [("POST", "/cds-services"), ("GET", SELECT + "/feedback"),
                                         ("PUT", SIGN + "/feedback")])
def test_wrong_method_elsewhere_is_405(client: FlaskClient, method: str, path: str) -> None:
    assert_error(client.open(path, method=method, json={}), 405)


def test_body_over_max_body_bytes_is_413(make_app: Callable[..., Flask]) -> None:
    client = make_app(MAX_BODY_BYTES=2048).test_client()
    request = eager_request("order-select")
    request["padding"] = "x" * 4096
    assert_error(client.post(SELECT, json=request), 413)
    # just under the limit is fine
    small = eager_request("order-select")
    assert client.post(SELECT, json=small).status_code == 200


@pytest.mark.parametrize("status", sorted(set(errors.ERROR_CODES) - {401, 412, 500}))
def test_one_error_code_per_kind_of_error_whoever_raises_it(make_app: Callable[..., Flask], status: int) -> None:
    """werkzeug's errors and the service's own answer with the same code from errors.ERROR_CODES."""
    app = make_app()
    service_error = next(cls for cls in vars(errors).values()
                         if isinstance(cls, type) and issubclass(cls, errors.CdsError) and cls.status == status
                         and cls is not errors.CdsError) if status in (400, 404, 405, 413, 415) else None

    def from_werkzeug() -> None:
        abort(status)

    def from_the_service() -> None:
        assert service_error is not None
        raise service_error("raised by the service")

    app.add_url_rule("/test-werkzeug-error", "test_werkzeug_error", from_werkzeug)
    app.add_url_rule("/test-service-error", "test_service_error", from_the_service)
    client = app.test_client()
    by_werkzeug = assert_error(client.get("/test-werkzeug-error"), status)
    assert by_werkzeug["error"] == errors.ERROR_CODES[status]
    if service_error is not None:
        by_service = assert_error(client.get("/test-service-error"), status)
        assert by_service["error"] == by_werkzeug["error"]


def test_unknown_path_and_unknown_service_are_the_same_404(client: FlaskClient) -> None:
    unknown_path = assert_error(client.get("/no/such/path"), 404)
    unknown_service = assert_error(client.post("/cds-services/no-such-service", json=eager_request()), 404)
    assert unknown_path["error"] == unknown_service["error"] == "not_found"


def test_unexpected_exception_is_a_generic_500_naming_a_request_id(
        client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal secret detail /srv/app/module.py line 42")

    import cds_service.engine.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "run", explode)
    response = client.post(SELECT, json=eager_request("order-select"))
    body = assert_error(response, 500)
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "RuntimeError" not in text and "internal secret" not in text
    request_id = response.headers.get("X-Request-Id")
    assert request_id and request_id in body["detail"]


# --- CORS ------------------------------------------------------------------------------------------


def _jwt_config() -> tuple[bytes, dict[str, Any]]:
    private_pem, jwk = new_key_pair("ES384", "test-key-1")
    return private_pem, {"AUTH": "jwt", "TRUSTED_ISSUERS": json.dumps({ISS: {"jwks": {"keys": [jwk]}}})}


@pytest.mark.parametrize("path,requested_headers", [
    (SELECT, "authorization,content-type"),
    (SIGN, "authorization,content-type"),
    (SELECT + "/feedback", "authorization,content-type"),
    ("/cds-services", "authorization"),
])
def test_cors_preflight_without_authentication_under_jwt(make_app: Callable[..., Flask], path: str,
                                                         requested_headers: str) -> None:
    _, config = _jwt_config()
    client = make_app(CORS_ORIGINS=ORIGIN, **config).test_client()
    method = "GET" if path == "/cds-services" else "POST"
    response = client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": method,
                                             "Access-Control-Request-Headers": requested_headers})
    assert response.status_code in (200, 204), response.get_data(as_text=True)
    assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")
    allowed = {h.strip().lower() for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {h.strip() for h in requested_headers.split(",")} <= allowed
    assert method in response.headers.get("Access-Control-Allow-Methods", "")


def test_cors_star_origin(make_app: Callable[..., Flask]) -> None:
    client = make_app(CORS_ORIGINS="*").test_client()
    response = client.options(SELECT, headers={"Origin": "https://anything.example.org",
                                               "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": "authorization,content-type"})
    assert response.status_code in (200, 204)
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://anything.example.org")


def test_cors_headers_on_actual_responses(make_app: Callable[..., Flask]) -> None:
    client = make_app(CORS_ORIGINS=ORIGIN).test_client()
    response = client.post(SELECT, json=eager_request(), headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") == ORIGIN
    error = client.post("/cds-services/nope", json=eager_request(), headers={"Origin": ORIGIN})
    assert error.status_code == 404
    assert error.headers.get("Access-Control-Allow-Origin") == ORIGIN


def test_cors_other_origin_is_not_allowed(make_app: Callable[..., Flask]) -> None:
    client = make_app(CORS_ORIGINS=ORIGIN).test_client()
    response = client.options(SELECT, headers={"Origin": "https://evil.example.org",
                                               "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_no_cors_when_origins_empty(client: FlaskClient) -> None:
    response = client.options(SELECT, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": "authorization,content-type"})
    assert "Access-Control-Allow-Origin" not in response.headers
    actual = client.post(SELECT, json=eager_request(), headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in actual.headers


def test_jwt_discovery_needs_a_token_and_accepts_a_valid_one(make_app: Callable[..., Flask]) -> None:
    private_pem, config = _jwt_config()
    client = make_app(PUBLIC_BASE_URL="https://cds.example.org", **config).test_client()
    assert client.get("/cds-services").status_code == 401
    token = mint_token(private_pem, alg="ES384", kid="test-key-1", iss=ISS,
                       aud="https://cds.example.org/cds-services")
    response = client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert first_error("discovery.json", response.get_json()) is None


# --- settings --------------------------------------------------------------------------------------


def test_create_app_rejects_unknown_config_keys(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(SettingsError, match="NO_SUCH_SETTING"):
        make_app(NO_SUCH_SETTING=1)


def test_create_app_rejects_env_prefixed_config_keys(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(SettingsError):
        make_app(CDS_AUTH="off")


def test_env_settings_are_read(make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_MAX_BODY_BYTES", "1500")
    monkeypatch.setenv("CDS_CORS_ORIGINS", ORIGIN)
    app = make_app()
    settings = app.extensions["cds_settings"]
    assert settings.MAX_BODY_BYTES == 1500 and settings.CORS_ORIGINS == ORIGIN
    client = app.test_client()
    request = eager_request()
    request["padding"] = "x" * 2000
    assert_error(client.post(SELECT, json=request), 413)
    preflight = client.options(SELECT, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert preflight.headers.get("Access-Control-Allow-Origin") == ORIGIN


def test_config_overrides_env(make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_MAX_BODY_BYTES", "1500")
    monkeypatch.setenv("CDS_AUTH", "jwt")
    app = make_app(MAX_BODY_BYTES=100_000)  # the factory passes AUTH=off, overriding the env's jwt
    settings = app.extensions["cds_settings"]
    assert settings.MAX_BODY_BYTES == 100_000 and settings.AUTH == "off"
    request = eager_request()
    request["padding"] = "x" * 2000
    assert app.test_client().post(SELECT, json=request).status_code == 200


def test_production_defaults_are_strict(make_app: Callable[..., Flask]) -> None:
    client = make_app(AUTH="jwt").test_client()  # no trusted issuers: every call refused
    assert client.post(SELECT, json=eager_request()).status_code == 401
    assert client.get("/cds-services").status_code == 401
    settings = client.application.extensions["cds_settings"]
    assert settings.CONTENT_POLICY == "approved-only"
    assert settings.CORS_ORIGINS == ""
    assert settings.MAX_BODY_BYTES == 5 * 1024 * 1024


# --- health ----------------------------------------------------------------------------------------


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_readyz_ready(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "ready"


def test_readyz_reports_an_unreachable_store_but_stays_ready(make_app: Callable[..., Flask]) -> None:
    """AUTH=off: no replay store, so the database is only the feedback/audit store: reported, not 503
    (issue 15 item 8; with AUTH=jwt and no Redis it is the replay store: tests/test_replay_shared.py)."""
    started = time.perf_counter()
    client = make_app(DATABASE_URL=CLOSED_PORT_URL).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready" and "reasons" not in body
    assert any("store" in warning for warning in body["warnings"])
    assert "127.0.0.1" not in json.dumps(body) and "u@" not in json.dumps(body)
    # Hook calls are still served, health too.
    assert client.get("/healthz").status_code == 200
    assert post_hook(client, SELECT, eager_request()) == {"cards": []}
    assert time.perf_counter() - started < 10


def test_healthz_and_readyz_need_no_token_under_jwt(make_app: Callable[..., Flask]) -> None:
    _, config = _jwt_config()
    client = make_app(**config).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_every_hook_response_is_no_store(client: FlaskClient) -> None:
    response = client.post(SELECT, json=eager_request())
    assert response.headers.get("Cache-Control") == "no-store"
