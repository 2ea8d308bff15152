"""GET /openapi.json: a valid OpenAPI 3.1 document built from the JSON Schemas the service validates with.

The document must not drift from the code: the embedded schemas accept and refuse exactly what the
service's own validators accept and refuse, every ``$ref`` resolves inside the document, and what
the running app answers validates against the response schemas the document declares.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from issued import issue_cards
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture
from cds_service.devtools.keys import new_key_pair
from cds_service.http import openapi
from cds_service.protocol.schema import SCHEMA_NAMES, first_error, load_schema

SPEC_EXAMPLES = Path(__file__).resolve().parent / "spec_examples"
DOC_URI = "urn:ivig-cds:openapi"
HOOKS = ("order-select", "order-sign")
EMBEDDED = {stem: name for name, stem in openapi.EMBEDDED_SCHEMAS.items()}


def document_of(app: Flask, **kwargs: Any) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json", **kwargs)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document: dict[str, Any] = response.get_json()
    return document


def component_validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator for ``#/components/schemas/<name>`` that resolves refs inside ``document`` only."""
    registry: Registry[Any] = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(document))
    return Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=registry,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def valid_under(document: dict[str, Any], name: str, instance: Any) -> bool:
    return component_validator(document, name).is_valid(instance)


def all_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_refs(item)


def resolve_pointer(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(CONTENT_POLICY="all")


@pytest.fixture
def jwt_app(make_app: Callable[..., Flask]) -> Flask:
    _, jwk = new_key_pair("ES384", "openapi-test")
    issuers = {"https://ehr.example.org": {"jwks": {"keys": [jwk]}}}
    return make_app(AUTH="jwt", TRUSTED_ISSUERS=json.dumps(issuers), CONTENT_POLICY="all")


@pytest.fixture
def document(app: Flask) -> dict[str, Any]:
    return document_of(app)


# -- the document itself --------------------------------------------------------------------

def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    meta_schema = definitions.OPENAPI_31  # the OAS 3.1 meta-schema (2022-10-07)
    errors = sorted(Draft202012Validator(meta_schema).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    assert document["openapi"] == "3.1.0"
    assert document["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["info"]["title"] == "ivig-cds"


def test_every_component_is_a_valid_2020_12_schema(document: dict[str, Any]) -> None:
    for name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert "$id" not in schema, f"{name}: an $id would re-base its #-refs away from the document"


def test_every_ref_resolves_inside_the_document(document: dict[str, Any]) -> None:
    refs = set(all_refs(document))
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), f"{ref} points outside the document"
        resolve_pointer(document, ref)


def test_every_schema_file_is_embedded_whole(document: dict[str, Any]) -> None:
    """Each protocol schema file sits under components/schemas, only its refs re-based."""
    schemas = document["components"]["schemas"]
    assert set(EMBEDDED) == set(SCHEMA_NAMES)
    for stem, name in EMBEDDED.items():
        original = load_schema(stem)
        original.pop("$id")
        original.pop("$schema")
        prefix = f"#/components/schemas/{name}"
        restored = json.loads(json.dumps(schemas[name]).replace(f'"{prefix}/', '"#/'))
        assert restored == original, f"{name} differs from protocol/schemas/{stem}.json"


def test_paths_and_operations(document: dict[str, Any], app: Flask) -> None:
    paths = document["paths"]
    assert set(paths) == {"/cds-services", "/cds-services/{service_id}", "/cds-services/{service_id}/feedback",
                          "/healthz", "/readyz"}
    assert set(paths["/cds-services"]) == {"get"}
    assert set(paths["/cds-services/{service_id}"]) == {"parameters", "post"}
    services = app.extensions["cds_runtime"].services
    for path in ("/cds-services/{service_id}", "/cds-services/{service_id}/feedback"):
        (parameter,) = paths[path]["parameters"]
        assert parameter["in"] == "path" and parameter["required"] is True
        assert sorted(parameter["schema"]["enum"]) == sorted(services)
    call = paths["/cds-services/{service_id}"]["post"]
    assert call["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HookRequest"}
    responses = call["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/HookResponse")
    assert responses["412"]["content"]["application/json"]["schema"]["$ref"].endswith("/OperationOutcome")
    for status in ("400", "404", "405", "413", "415"):
        assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert "Allow" in responses["405"]["headers"]
    feedback = paths["/cds-services/{service_id}/feedback"]["post"]
    assert feedback["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/FeedbackRequest")
    assert paths["/cds-services"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"].endswith("/Discovery")


def test_no_security_scheme_when_auth_is_off(document: dict[str, Any]) -> None:
    assert "securitySchemes" not in document["components"]
    assert "security" not in document
    for path in document["paths"].values():
        for operation in (v for k, v in path.items() if k != "parameters"):
            assert operation.get("security", []) == []
            assert "401" not in operation["responses"]


def test_bearer_jwt_scheme_when_auth_is_jwt(jwt_app: Flask) -> None:
    document = document_of(jwt_app)  # not a protected route: no token needed
    scheme = document["components"]["securitySchemes"][openapi.SECURITY_SCHEME]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    for path, item in document["paths"].items():
        for operation in (v for k, v in item.items() if k != "parameters"):
            if path.startswith("/cds-services"):
                assert operation["security"] == [{openapi.SECURITY_SCHEME: []}]
                assert operation["responses"]["401"]["content"]["application/json"]["schema"][
                    "$ref"].endswith("/Error")
            else:
                assert operation["security"] == []


# -- servers, caching, headers ------------------------------------------------------------------

def test_servers_is_the_request_root_when_no_public_base_url(app: Flask) -> None:
    document = document_of(app, base_url="https://cds.internal.example:8443/")
    assert document["servers"] == [{"url": "https://cds.internal.example:8443"}]


def test_servers_is_public_base_url_when_set(make_app: Callable[..., Flask]) -> None:
    app = make_app(PUBLIC_BASE_URL="https://cds.example.org/ivig/")
    document = document_of(app, base_url="http://10.0.0.7:8000/", headers={"Host": "evil.example"})
    assert document["servers"] == [{"url": "https://cds.example.org/ivig"}]


def test_document_is_built_once_per_app(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    original = openapi.build_document

    def counting(runtime: Any, security_scheme: Any) -> dict[str, Any]:
        calls.append(runtime)
        return original(runtime, security_scheme)

    monkeypatch.setattr(openapi, "build_document", counting)
    first = document_of(app, base_url="http://a.example/")
    second = document_of(app, base_url="http://b.example/")
    assert len(calls) == 1
    assert first["servers"] != second["servers"]
    assert {k: v for k, v in first.items() if k != "servers"} == {
        k: v for k, v in second.items() if k != "servers"}


def test_each_app_has_its_own_document(make_app: Callable[..., Flask], jwt_app: Flask) -> None:
    off = document_of(make_app())
    on = document_of(jwt_app)
    assert "securitySchemes" not in off["components"]
    assert "securitySchemes" in on["components"]


def test_security_headers_on_the_document(app: Flask) -> None:
    response = app.test_client().get("/openapi.json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_only_get(app: Flask) -> None:
    response = app.test_client().post("/openapi.json", json={})
    assert response.status_code == 405
    assert response.get_json()["error"]
    assert "GET" in response.headers["Allow"]


def test_external_refs_are_refused() -> None:
    with pytest.raises(ValueError, match="self-contained"):
        openapi.embed_schema({"properties": {"a": {"$ref": "other.json#/$defs/x"}}}, "X")


def test_embed_rewrites_local_refs_only_and_drops_id() -> None:
    schema: dict[str, Any] = {"$schema": "x", "$id": "https://example.org/s.json", "$defs": {"a": {"type": "string"}},
              "properties": {"a": {"$ref": "#/$defs/a"}, "b": {"items": [{"$ref": "#"}]}}}
    embedded = openapi.embed_schema(schema, "S")
    assert embedded == {"$defs": {"a": {"type": "string"}},
                        "properties": {"a": {"$ref": "#/components/schemas/S/$defs/a"},
                                       "b": {"items": [{"$ref": "#/components/schemas/S"}]}}}
    assert schema["properties"]["a"] == {"$ref": "#/$defs/a"}  # the input is not modified


# -- the schemas accept what the service accepts ------------------------------------------------

def _fixture_requests() -> list[tuple[str, dict[str, Any]]]:
    return [(hook, build_request(load_fixture(name), hook)) for name in list_fixtures() for hook in HOOKS]


def _examples(prefix: str) -> list[Any]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(SPEC_EXAMPLES.glob(f"{prefix}*.json"))]


def _invalid_variants(instance: dict[str, Any]) -> list[dict[str, Any]]:
    """Instances the service's schemas refuse: each required member dropped, each member retyped."""
    out = []
    for key in list(instance):
        dropped = copy.deepcopy(instance)
        del dropped[key]
        out.append(dropped)
        retyped = copy.deepcopy(instance)
        retyped[key] = 12345 if not isinstance(instance[key], int) else "x"
        out.append(retyped)
    return out


def test_embedded_schemas_agree_with_the_service_schemas(document: dict[str, Any]) -> None:
    cases: list[tuple[str, Any]] = []
    for _, request in _fixture_requests():
        cases.append(("request", request))
        cases.extend(("request", v) for v in _invalid_variants(request))
    for hook, request in _fixture_requests():
        context = request["context"]
        stem = f"context-{hook}"
        cases.append((stem, context))
        cases.extend((stem, v) for v in _invalid_variants(context))
    for example in _examples("feedback-"):
        cases.append(("feedback", example))
        cases.extend(("feedback", v) for v in _invalid_variants(example))
        cases.extend(("feedback", {"feedback": [v]}) for v in _invalid_variants(example["feedback"][0]))
    for example in _examples("cards-response"):
        cases.append(("response", example))
    for example in _examples("discovery-response"):
        cases.append(("discovery", example))
        cases.extend(("discovery", v) for v in _invalid_variants(example))
    assert len(cases) > 100
    verdicts = {True: 0, False: 0}
    for stem, instance in cases:
        service_says = first_error(stem, instance) is None
        document_says = valid_under(document, EMBEDDED[stem], instance)
        assert document_says == service_says, (stem, first_error(stem, instance))
        verdicts[service_says] += 1
    assert verdicts[True] and verdicts[False]


def test_hook_request_schema_ties_context_to_hook(document: dict[str, Any]) -> None:
    for hook, request in _fixture_requests()[:4]:
        assert valid_under(document, "HookRequest", request)
        other = copy.deepcopy(request)
        if hook == "order-select":
            del other["context"]["selections"]  # an order-select context needs selections
        else:
            other["context"]["draftOrders"] = {"resourceType": "Parameters"}
        assert not valid_under(document, "HookRequest", other)
        unknown_hook = dict(request, hook="patient-view")
        assert not valid_under(document, "HookRequest", unknown_hook)


# -- what the app answers validates against the declared responses -------------------------------

def _declared(document: dict[str, Any], path: str, method: str, status: int) -> str:
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, which is not declared"
    ref: str = responses[str(status)]["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]


def test_answers_validate_against_the_document(app: Flask, document: dict[str, Any]) -> None:
    client = app.test_client()
    services = {s.hook: s.id for s in app.extensions["cds_runtime"].services.values()}
    checked: set[tuple[str, int]] = set()

    def check(path_template: str, method: str, response: Any) -> None:
        name = _declared(document, path_template, method, response.status_code)
        body = response.get_json()
        validator = component_validator(document, name)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, (path_template, response.status_code, errors[:3])
        checked.add((path_template, response.status_code))

    check("/cds-services", "get", client.get("/cds-services"))
    check("/healthz", "get", client.get("/healthz"))
    check("/readyz", "get", client.get("/readyz"))
    hook_path = "/cds-services/{service_id}"
    for hook, request in _fixture_requests():
        check(hook_path, "post", client.post(f"/cds-services/{services[hook]}", json=request))
    name = list_fixtures()[0]
    no_prefetch = build_request(load_fixture(name), "order-sign", prefetch=False)
    check(hook_path, "post", client.post(f"/cds-services/{services['order-sign']}", json=no_prefetch))
    check(hook_path, "post", client.post(f"/cds-services/{services['order-sign']}", json={"hook": 1}))
    check(hook_path, "post", client.post(f"/cds-services/{services['order-sign']}", data="x",
                                         content_type="text/plain"))
    check(hook_path, "post", client.post("/cds-services/no-such-service", json={}))
    feedback_path = "/cds-services/{service_id}/feedback"
    for example in _examples("feedback-"):
        issue_cards(client.application, services["order-select"],
                    *{item["card"] for item in example["feedback"]} - _issued(client, example))
        check(feedback_path, "post", client.post(f"/cds-services/{services['order-select']}/feedback",
                                                 json=example))
    check(feedback_path, "post", client.post(f"/cds-services/{services['order-select']}/feedback",
                                             json={"feedback": []}))
    assert {(hook_path, 200), (hook_path, 400), (hook_path, 404), (hook_path, 415),
            (feedback_path, 200), (feedback_path, 400)} <= checked
    assert (hook_path, 412) in checked, "no fixture without prefetch answered 412"


def test_401_answers_validate_against_the_document(jwt_app: Flask) -> None:
    document = document_of(jwt_app)
    client = jwt_app.test_client()
    service_id = sorted(jwt_app.extensions["cds_runtime"].services)[0]
    for path, template, method in (("/cds-services", "/cds-services", "get"),
                                   (f"/cds-services/{service_id}", "/cds-services/{service_id}", "post"),
                                   (f"/cds-services/{service_id}/feedback", "/cds-services/{service_id}/feedback",
                                    "post")):
        response = client.open(path, method=method.upper(), json={}, headers={"Authorization": "Bearer x.y.z"})
        assert response.status_code == 401
        assert valid_under(document, _declared(document, template, method, 401), response.get_json())


def _issued(client: Any, example: dict[str, Any]) -> set[str]:
    store = client.application.extensions["cds_runtime"].store
    return {item["card"] for item in example["feedback"] if store.issued_card(item["card"]) is not None}
