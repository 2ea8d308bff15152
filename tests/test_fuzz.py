"""Property-based fuzzing of every endpoint: zero 5xx, and every 4xx answers a JSON error body.

Thousands of requests, all through the Flask test client (no network):

- real hook requests built from every fixture (``build_request``), mutated: keys dropped, types
  changed, nulls, huge and non-finite numbers, odd unicode (lone surrogates included), deep
  nesting, duplicate keys, random selections, draft orders of random shapes, prefetch values of
  random shapes (Bundles with garbage entries, OperationOutcomes, strings, ...);
- garbage bodies (random bytes, random JSON, truncated JSON, other encodings, wrong content types);
- feedback bodies, mutated the same way;
- random methods, paths, query strings and headers on every route, and the demo page's JSON API;
- the same with ``AUTH=jwt``: no token, garbage tokens, forged and mis-addressed tokens, and a few
  valid ones (so the body parser is fuzzed behind the verifier too);
- schemathesis against the served ``/openapi.json``.

Bounded (``max_examples``) and deterministic (``derandomize=True``) so the file runs in well under a
minute on two cores.  A failure prints the offending request (hypothesis' falsifying example).
Every 200 from a hook endpoint must also validate against response.json, and no answer may use
the non-standard JSON tokens NaN / Infinity.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jwt_helpers import b64url, raw_token
from werkzeug.test import TestResponse

from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture, record_resources
from cds_service.devtools.keys import mint_token, new_key_pair
from cds_service.engine.services import default_services
from cds_service.protocol.schema import first_error

HOOKS = ("order-select", "order-sign")
SERVICE_FOR_HOOK = {s.hook: s.id for s in default_services().values()}
SERVICE_IDS = sorted(SERVICE_FOR_HOOK.values())
SPEC_EXAMPLES = Path(__file__).resolve().parent / "spec_examples"
ISSUER = "https://ehr.fuzz.example.org"
KID = "fuzz-es384"

JsonPath = tuple[str | int, ...]
Json = Any


def fuzz_settings(max_examples: int) -> Callable[[Any], Any]:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink], print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


# -- the material: real requests ------------------------------------------------------------

def _base_requests() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for name in list_fixtures():
        fixture = load_fixture(name)
        for hook in HOOKS:
            out.append((SERVICE_FOR_HOOK[hook],
                        build_request(fixture, hook, hook_instance="d0c8b3a4-5c1e-4c6b-9a57-2f1f3f6f0a01")))
    return out


BASE_REQUESTS = _base_requests()
RESOURCES: list[dict[str, Any]] = [r for name in list_fixtures() for r in record_resources(load_fixture(name))]
DRAFT_ORDERS: list[dict[str, Any]] = [
    e["resource"] for _, body in BASE_REQUESTS for e in body["context"]["draftOrders"].get("entry", [])
    if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
FEEDBACK_BASES: list[dict[str, Any]] = [
    json.loads((SPEC_EXAMPLES / name).read_text(encoding="utf-8"))
    for name in ("feedback-accepted.json", "feedback-overridden.json", "feedback-overridden-with-reason.json")]


# -- checking a response --------------------------------------------------------------------

def _no_constant(name: str) -> Json:
    raise AssertionError(f"the service answered non-standard JSON ({name})")


def strict_json(data: bytes) -> Json:
    """RFC 8259 JSON only: NaN / Infinity in an answer break every other JSON parser."""
    return json.loads(data.decode("utf-8"), parse_constant=_no_constant)


def check_response(response: TestResponse, method: str = "POST", path: str = "") -> Json:
    """The invariants every answer keeps; returns the parsed JSON body (or None)."""
    status = response.status_code
    assert status < 500, f"{status} on {method} {path}: {response.get_data()[:500]!r}"
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    if path.startswith("/cds-services"):
        assert response.headers.get("Cache-Control") == "no-store"
    if method == "HEAD" or status in (204, 304):
        return None
    body = None
    if response.mimetype == "application/json":
        body = strict_json(response.get_data())
    if 400 <= status < 500:
        assert body is not None, f"{status} without a JSON body: {response.get_data()[:300]!r}"
        if status == 412:
            assert body.get("resourceType") == "OperationOutcome", body
            assert body.get("issue"), body
        else:
            assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
            assert set(body) <= {"error", "detail"}, body
        if status == 405:
            assert response.headers.get("Allow"), "405 without an Allow header"
    return body


def check_hook_answer(response: TestResponse, service_id: str) -> None:
    body = check_response(response, "POST", f"/cds-services/{service_id}")
    if response.status_code == 200:
        problem = first_error("response", body)
        assert problem is None, f"200 body breaks response.json: {problem}"


# -- JSON value strategies ------------------------------------------------------------------

SPECIAL_STRINGS = [
    "", " ", "\x00", "\t\n", "null", "true", "0", "-1", "1e999", "NaN", "Infinity",
    "\ud800", "\udfff", "a\udc00b", "\u202eevil", "\ufeff", "💊💉", "é" * 40, "x" * 3000,
    "Patient/", "MedicationRequest/", "MedicationRequest/../../etc", "#contained", "urn:uuid:",
    "http://127.0.0.1:1/fhir", "javascript:alert(1)", "<script>alert(1)</script>",
    "{{ 7*7 }}", "{% for x in range(10**9) %}{% endfor %}", "{{ config }}", "[citation-key]",
    "2026-02-30", "2026-13-01", "0000-00-00", "9999-12-31T23:59:59.999999999+14:00", "-2026-01-01",
    "99999-01-01", "2026", "2026-11", "T10:00", "2026-11-22T25:61:61Z",
    "http://loinc.org", "http://snomed.info/sct", "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://hl7.org/fhir/sid/ndc", "http://hl7.org/fhir/sid/icd-10-cm", "M33.11", "J84.10",
    "33772-5", "mg/dL", "mL/min/{1.73_m2}", "kg", "g/kg", "%", "intravenous immunoglobulin",
    "IVIG", "hizentra", "draft", "active", "entered-in-error", "final", "refuted", "order",
]
NUMBERS: list[Json] = [0, -0.0, 1, -1, 0.5, 1e-320, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63), 10**30,
                       -(10**30), 10**400, -(10**400), 1e308, -1e308, float("inf"), float("-inf"),
                       float("nan"), "1e400", "-inf", "nan", " 12 "]
FHIR_KEYS = [
    "resourceType", "id", "code", "coding", "system", "display", "text", "value", "unit",
    "valueQuantity", "valueCodeableConcept", "valueString", "interpretation", "component", "status",
    "effectiveDateTime", "effectivePeriod", "issued", "authoredOn", "subject", "reference", "entry",
    "resource", "medicationCodeableConcept", "medicationReference", "contained", "dosageInstruction",
    "doseAndRate", "doseQuantity", "route", "category", "clinicalStatus", "verificationStatus",
    "intent", "birthDate", "name", "given", "family", "extension", "url", "meta", "total", "link",
]

scalars: st.SearchStrategy[Json] = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(SPECIAL_STRINGS), st.sampled_from(NUMBERS))
keys: st.SearchStrategy[str] = st.one_of(st.sampled_from(FHIR_KEYS), st.text(max_size=8),
                                         st.sampled_from(["\ud800", "", "__proto__", "$ref"]))
json_values: st.SearchStrategy[Json] = st.recursive(
    scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                        st.dictionaries(keys, children, max_size=4)),
    max_leaves=10)


@st.composite
def codings(draw: st.DrawFn) -> dict[str, Json]:
    return {"system": draw(st.sampled_from(SPECIAL_STRINGS) | st.text(max_size=10)),
            "code": draw(st.sampled_from(SPECIAL_STRINGS) | scalars),
            "display": draw(scalars)}


@st.composite
def random_resources(draw: st.DrawFn) -> Json:
    """A resource-ish object: a real one mutated, a random one with FHIR-looking keys, or junk."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        resource = copy.deepcopy(draw(st.sampled_from(RESOURCES)))
        return draw(mutated(resource, max_mutations=3))
    if kind == 1:
        resource = copy.deepcopy(draw(st.sampled_from(DRAFT_ORDERS)))
        return draw(mutated(resource, max_mutations=3))
    if kind == 2:
        resource = {"resourceType": draw(st.sampled_from(
            ["MedicationRequest", "Observation", "Condition", "Patient", "MedicationStatement",
             "Procedure", "ServiceRequest", "Medication", "Bundle", "OperationOutcome", "X", ""]))}
        extra = draw(st.dictionaries(st.sampled_from(FHIR_KEYS), json_values | codings(), max_size=6))
        resource.update(extra)
        if draw(st.booleans()):
            resource["code"] = {"coding": draw(st.lists(codings(), max_size=3)), "text": draw(scalars)}
        return resource
    return draw(json_values)


@st.composite
def bundles(draw: st.DrawFn) -> Json:
    """Prefetch-shaped values: Bundles (often with garbage entries), OperationOutcomes, junk."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        entries = draw(st.lists(st.one_of(st.builds(lambda r: {"resource": r}, random_resources()),
                                          json_values), max_size=5))
        bundle: dict[str, Json] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        if draw(st.booleans()):
            bundle["total"] = draw(scalars)
        return bundle
    if kind == 1:
        return {"resourceType": "OperationOutcome",
                "issue": draw(st.lists(st.fixed_dictionaries(
                    {"severity": st.sampled_from(["error", "warning", "information", "x"]),
                     "code": st.sampled_from(["not-found", "processing", "forbidden"])}), max_size=2))}
    if kind == 2:
        return {"resourceType": "Bundle", "entry": draw(json_values)}
    if kind == 3:
        return draw(random_resources())
    return draw(json_values)


# -- mutating a JSON document ---------------------------------------------------------------

# Markers replaced in the serialised text by things json.dumps cannot (or will not) write.
_MARK = "@@fuzz-mark-{}@@"
_MARK_RE = re.compile(r'"@@fuzz-mark-([a-z0-9-]+)@@"')
_DUP_KEY = "@@fuzz-duplicate@@"  # "@@fuzz-duplicate@@hook": 1 is written as a second "hook": 1
_RAW_TEXT = {
    "deep-array": "[" * 10_000 + "]" * 10_000,
    "deep-object": '{"a":' * 10_000 + "1" + "}" * 10_000,
    "deep-65": "[" * 65 + "]" * 65,
    "deep-63": "[" * 63 + "]" * 63,
    "long-int": "7" * 5_000,
    "huge-exponent": "1e999999",
    "nan": "NaN",
    "neg-infinity": "-Infinity",
    "escaped-surrogate": '"\\udc00\\ud800"',
    "escaped-nul": '"\\u0000"',
}


def json_paths(document: Json) -> list[JsonPath]:
    """Every (object key / array index) path in ``document``, iteratively."""
    out: list[JsonPath] = []
    stack: list[tuple[JsonPath, Json]] = [((), document)]
    while stack:
        path, node = stack.pop()
        children: Any = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
            node, list) else ()
        for key, child in children:
            out.append((*path, key))
            stack.append(((*path, key), child))
    return out


def _parent(document: Json, path: JsonPath) -> Any:
    node = document
    for part in path[:-1]:
        node = node[part]
    return node


def _retyped(value: Json) -> Json:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    return {}


MUTATIONS = ("drop", "null", "replace", "retype", "number", "string", "raw", "duplicate-key", "wrap",
             "number-leaf", "number-leaf", "date-leaf", "code-leaf")
_DATE_VALUE = re.compile(r"^\d{4}(-\d\d(-\d\d)?)?(T.*)?$")
DATES = ["2026-02-30", "2026-13-01", "0001-01-01", "9999-12-31", "2026", "2026-11", "2026-11-22T25:00:00Z",
         "2026-11-22T10:00:00+99:00", "", "yesterday", "2026-11-22T10:00:00.123456789123Z", "0000-01-01",
         "1900-01-01", "2100-01-01T00:00:00Z", "+002026-11-22", "2026-W47"]
CODE_KEYS = frozenset({"code", "system", "unit", "display", "text", "status", "reference", "resourceType",
                       "id"})


def _leaf_paths(document: Json, paths: list[JsonPath], kind: str) -> list[JsonPath]:
    """The paths whose value is a number (``number-leaf``), a date (``date-leaf``) or a code-ish
    string (``code-leaf``): where the clinical logic reads values."""
    out = []
    for path in paths:
        value = _parent(document, path)[path[-1]]
        wanted = {
            "number-leaf": isinstance(value, int | float) and not isinstance(value, bool),
            "date-leaf": isinstance(value, str) and bool(_DATE_VALUE.match(value)),
            "code-leaf": isinstance(value, str) and path[-1] in CODE_KEYS,
        }
        if wanted.get(kind):
            out.append(path)
    return out


@st.composite
def mutated(draw: st.DrawFn, document: Json, max_mutations: int = 3, scope: JsonPath = ()) -> Json:
    """``document`` (mutated in place and returned) after 1..max_mutations random edits, at paths
    under ``scope`` when there are any (``("prefetch",)``: where the patient data is)."""
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = json_paths(document)
        in_scope = [p for p in paths if p[:len(scope)] == scope and len(p) > len(scope)]
        paths = in_scope or paths
        if not paths:
            return draw(json_values)
        kind = draw(st.sampled_from(MUTATIONS))
        if kind.endswith("-leaf"):
            paths = _leaf_paths(document, paths, kind) or paths
        path = draw(st.sampled_from(paths))
        parent = _parent(document, path)
        key = path[-1]
        if kind == "number-leaf":
            parent[key] = draw(st.sampled_from(NUMBERS))
        elif kind == "date-leaf":
            parent[key] = draw(st.sampled_from(DATES))
        elif kind == "code-leaf":
            parent[key] = draw(text_values)
        elif kind == "drop":
            del parent[key]
        elif kind == "null":
            parent[key] = None
        elif kind == "replace":
            parent[key] = draw(json_values)
        elif kind == "retype":
            parent[key] = _retyped(parent[key])
        elif kind == "number":
            parent[key] = draw(st.sampled_from(NUMBERS))
        elif kind == "string":
            parent[key] = draw(text_values)
        elif kind == "raw":
            parent[key] = _MARK.format(draw(st.sampled_from(sorted(_RAW_TEXT))))
        elif kind == "duplicate-key" and isinstance(parent, dict) and isinstance(key, str):
            parent[_DUP_KEY + key] = draw(json_values)
        elif kind == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
    return document


def serialise(document: Json, *, ascii_only: bool = True) -> bytes:
    """JSON text for ``document``, with the raw-text markers and duplicate keys written out.

    ``ascii_only=False`` writes non-ASCII characters as UTF-8 (lone surrogates as the invalid
    bytes ``surrogatepass`` makes); ``True`` escapes them (``\\ud800``), which is valid JSON text.
    """
    text = json.dumps(document, ensure_ascii=ascii_only, allow_nan=True)
    text = _MARK_RE.sub(lambda m: _RAW_TEXT[m.group(1)], text).replace(_DUP_KEY, "")
    return text.encode("utf-8", "surrogatepass")


# -- hook request mutations -------------------------------------------------------------------

@st.composite
def hook_requests(draw: st.DrawFn) -> tuple[str, bytes, str]:
    """(service id, body bytes, content type): a real request, mutated."""
    service_id, base = draw(st.sampled_from(BASE_REQUESTS))
    body = copy.deepcopy(base)
    context = body["context"]
    targeted = draw(st.sampled_from(
        ["generic", "generic", "generic", "selections", "draft-order", "prefetch", "prefetch",
         "prefetch-drop", "fhir", "hook", "lab-values", "none"]))
    if targeted == "selections":
        refs = [f"{r.get('resourceType')}/{r.get('id')}" for r in DRAFT_ORDERS]
        context["selections"] = draw(st.lists(st.sampled_from(refs) | st.sampled_from(SPECIAL_STRINGS)
                                              | json_values, max_size=4))
    elif targeted == "draft-order":
        entries = context.get("draftOrders", {}).setdefault("entry", [])
        new = draw(st.one_of(st.builds(lambda r: {"resource": r}, random_resources()), json_values))
        if entries and draw(st.booleans()):
            entries[draw(st.integers(0, len(entries) - 1))] = new
        else:
            entries.append(new)
    elif targeted == "prefetch" and isinstance(body.get("prefetch"), dict) and body["prefetch"]:
        key = draw(st.sampled_from(sorted(body["prefetch"])))
        body["prefetch"][key] = draw(bundles())
    elif targeted == "lab-values":  # results, reference ranges, doses: what the rules compute with
        paths = [p for p in json_paths(body) if p[-1] == "value" and len(p) > 2 and p[-2] in (
            "valueQuantity", "low", "high", "doseQuantity")]
        for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)) if paths else []:
            _parent(body, path)[path[-1]] = draw(st.sampled_from(NUMBERS))
    elif targeted == "prefetch-drop" and isinstance(body.get("prefetch"), dict):
        for key in draw(st.lists(st.sampled_from(sorted(body["prefetch"]) or ["x"]), max_size=4)):
            body["prefetch"].pop(key, None)
    elif targeted == "fhir":
        body["fhirServer"] = draw(st.sampled_from(SPECIAL_STRINGS) | st.just("https://fhir.example.org/r4"))
        body["fhirAuthorization"] = draw(json_values | st.fixed_dictionaries(
            {"access_token": scalars, "token_type": st.sampled_from(["Bearer", "bearer", "MAC", ""]),
             "expires_in": scalars, "scope": scalars, "subject": scalars}))
    elif targeted == "hook":
        body["hook"] = draw(st.sampled_from([*HOOKS, "patient-view", "", "ORDER-SIGN"]) | scalars)
        body["hookInstance"] = draw(st.sampled_from(SPECIAL_STRINGS) | st.uuids().map(str) | scalars)
    if targeted == "generic" or draw(st.integers(0, 3)) == 0:
        # Mostly where the patient data is: the schema lets anything through there.
        scope = draw(st.sampled_from([(), ("prefetch",), ("prefetch",), ("prefetch",),
                                      ("context", "draftOrders"), ("context",)]))
        body = draw(mutated(body, scope=scope))
    content_type = "application/json"
    if draw(st.integers(0, 9)) == 0:
        content_type = draw(st.sampled_from([
            "application/fhir+json", "application/json; charset=utf-8", "APPLICATION/JSON",
            "text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
            "application/jsonx", "text/json"]))
    return service_id, serialise(body, ascii_only=draw(st.integers(0, 3)) > 0), content_type


# -- the apps -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An AUTH=off app and an AUTH=jwt app trusting one ES384 key, plus that key."""
    from cds_service import create_app

    folder = tmp_path_factory.mktemp("fuzz")
    private_pem, jwk = new_key_pair("ES384", KID)
    stranger_pem, _ = new_key_pair("ES384", KID)  # same kid, untrusted key
    common = {"CONTENT_POLICY": "all", "AUDIT_KEY": "fuzz-audit-key", "PROFILE": "development"}
    off = create_app({"AUTH": "off",
                      "DATABASE_URL": f"sqlite:///{folder / 'off.sqlite3'}", "DEMO": True,
                      **common})
    on = create_app({"AUTH": "jwt", "DATABASE_URL": f"sqlite:///{folder / 'jwt.sqlite3'}",
                     "TRUSTED_ISSUERS": json.dumps({ISSUER: {"jwks": {"keys": [jwk]}}}), **common})
    for app in (off, on):
        app.testing = False  # errors answered by the error handlers, as in production
    yield {"off": off, "jwt": on, "key": private_pem, "stranger": stranger_pem}
    for app in (off, on):
        app.extensions["cds_runtime"].store.close()


@pytest.fixture(scope="module")
def off_client(apps: dict[str, Any]) -> FlaskClient:
    app: Flask = apps["off"]
    return app.test_client()


@pytest.fixture(scope="module")
def jwt_client(apps: dict[str, Any]) -> FlaskClient:
    app: Flask = apps["jwt"]
    return app.test_client()


# -- the properties -----------------------------------------------------------------------------

def test_every_fixture_request_is_answered_unmutated(off_client: FlaskClient) -> None:
    """The baseline the mutations start from: every real request is a 200 or a 412."""
    for service_id, body in BASE_REQUESTS:
        response = off_client.post(f"/cds-services/{service_id}", json=body)
        check_hook_answer(response, service_id)
        assert response.status_code == 200, response.get_json()


@fuzz_settings(max_examples=1500)
@given(request=hook_requests())
def test_mutated_hook_requests(off_client: FlaskClient, request: tuple[str, bytes, str]) -> None:
    service_id, body, content_type = request
    response = off_client.post(f"/cds-services/{service_id}", data=body, content_type=content_type)
    check_hook_answer(response, service_id)


@st.composite
def garbage_bodies(draw: st.DrawFn) -> bytes:
    _, base = draw(st.sampled_from(BASE_REQUESTS))
    text = json.dumps(base)
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return text[: draw(st.integers(0, len(text) - 1))].encode()
    if kind == 2:
        return serialise(draw(json_values))
    if kind == 3:
        return text.encode(draw(st.sampled_from(["utf-16", "utf-32", "utf-8-sig", "latin-1", "cp1252"])),
                           "replace")
    if kind == 4:
        return draw(st.sampled_from([b"", b"null", b"[]", b"{}", b"0", b'""', b"NaN", b"-Infinity",
                                     b"1" * 5000, b"\xff\xfe", b"\x00" * 10, b"{" * 100_000,
                                     b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 20_000, b'"\\ud800"']))
    if kind == 5:
        position = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["\x00", ",", "}", "]", '"', "\\", "\\u", "\\ud800", "/*", "\ufeff",
                                     "\u2028", "NaN", "1e999"]))
        return (text[:position] + junk + text[position:]).encode("utf-8", "surrogatepass")
    if kind == 6:
        return b"\xef\xbb\xbf" + text.encode()  # UTF-8 with a BOM
    if kind == 7:
        return text.encode() + draw(st.sampled_from([b" ", b"\n{}", b"garbage", b"\x00", b"]"]))
    return serialise(draw(mutated(copy.deepcopy(base), max_mutations=6)))


ENDPOINTS = [f"/cds-services/{sid}" for sid in SERVICE_IDS] + [
    f"/cds-services/{sid}/feedback" for sid in SERVICE_IDS] + ["/cds-services/no-such-service"]


@fuzz_settings(max_examples=300)
@given(path=st.sampled_from(ENDPOINTS), body=garbage_bodies(),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-16",
                                     "application/fhir+json", "text/plain"]))
def test_garbage_bodies(off_client: FlaskClient, path: str, body: bytes, content_type: str) -> None:
    response = off_client.post(path, data=body, content_type=content_type)
    check_response(response, "POST", path)


def _sometimes(draw: st.DrawFn, valid: st.SearchStrategy[Json], odd: st.SearchStrategy[Json]) -> Json:
    """Mostly a valid value (so the item gets past the schema), sometimes an odd one."""
    return draw(odd) if draw(st.integers(0, 9)) == 0 else draw(valid)


odd_text = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\x00", "\u202e", "💊", "\ufeff", "\u2028"])
text_values = st.sampled_from(SPECIAL_STRINGS) | st.text(max_size=30) | odd_text


@st.composite
def feedback_items(draw: st.DrawFn) -> dict[str, Json]:
    outcome = _sometimes(draw, st.sampled_from(["accepted", "overridden"]), scalars)
    item: dict[str, Json] = {
        "card": _sometimes(draw, text_values.filter(bool) | st.uuids().map(str), scalars),
        "outcome": outcome,
        "outcomeTimestamp": _sometimes(draw, st.sampled_from(
            ["2026-11-22T10:00:00Z", "2026-11-22T10:00:00.123+01:00", "1970-01-01T00:00:00Z"]),
            st.sampled_from(DATES) | scalars),
    }
    if outcome == "accepted" or draw(st.booleans()):
        item["acceptedSuggestions"] = _sometimes(
            draw, st.lists(st.fixed_dictionaries({"id": text_values.filter(bool)}), min_size=1, max_size=3),
            json_values)
    if outcome == "overridden" and draw(st.booleans()):
        item["overrideReason"] = _sometimes(draw, st.fixed_dictionaries(
            {"reason": st.fixed_dictionaries({"system": text_values, "code": text_values, "display": text_values}),
             "userComment": text_values}), json_values)
    if draw(st.integers(0, 5)) == 0:
        item["extension"] = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2))
    return item


@st.composite
def feedback_bodies(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        body: Json = {"feedback": draw(st.lists(feedback_items(), min_size=1, max_size=3))}
        if draw(st.integers(0, 9)) == 0:  # many items (each one stored)
            body["feedback"] = body["feedback"] * 50
        return serialise(body, ascii_only=draw(st.integers(0, 3)) > 0)
    base = copy.deepcopy(draw(st.sampled_from(FEEDBACK_BASES)))
    return serialise(draw(mutated(base, max_mutations=4)), ascii_only=draw(st.integers(0, 3)) > 0)


@fuzz_settings(max_examples=300)
@given(service_id=st.sampled_from([*SERVICE_IDS, "nope"]), body=feedback_bodies())
def test_mutated_feedback(off_client: FlaskClient, service_id: str, body: bytes) -> None:
    path = f"/cds-services/{service_id}/feedback"
    response = off_client.post(path, data=body, content_type="application/json")
    check_response(response, "POST", path)


PATHS = ["/cds-services", "/cds-services/", *ENDPOINTS, "/healthz", "/readyz", "/openapi.json", "/review",
         "/review/ivig-safety", "/", "/static/x.css", "/cds-services/ivig-order-select/feedback/x"]
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=40)


@st.composite
def any_requests(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(st.sampled_from(PATHS) | st.builds(
        lambda prefix, a, b: prefix + quote(a, safe="%") + b,  # never "//..." (a network-path URL)
        st.sampled_from(["/", "/cds-services/", "/review/"]), st.text(min_size=1, max_size=20),
        st.sampled_from(["", "/feedback", "/..", "//", "/%2e%2e/healthz"])))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]))
    headers = draw(st.dictionaries(
        st.sampled_from(["Accept", "Authorization", "X-Forwarded-For", "X-Forwarded-Host", "Origin",
                         "Accept-Encoding", "If-None-Match", "Range", "X-Request-Id"]),
        header_text, max_size=3))
    request: dict[str, Any] = {"path": path, "method": method, "headers": headers,
                               "query_string": draw(st.sampled_from(["", "a=1", "_format=xml"]) | header_text)}
    if method in ("POST", "PUT", "PATCH") or draw(st.booleans()):
        request["data"] = draw(st.sampled_from([b"", b"{}", b"[]", b"x"]) | st.builds(
            lambda r: json.dumps(r[1]).encode(), st.sampled_from(BASE_REQUESTS)))
        request["content_type"] = draw(st.sampled_from(["application/json", "text/html", "image/png"]))
    return request


@fuzz_settings(max_examples=300)
@given(request=any_requests())
def test_any_method_any_path(off_client: FlaskClient, request: dict[str, Any]) -> None:
    response = off_client.open(**request)
    check_response(response, request["method"], request["path"])


FIXTURE_NAMES = list_fixtures()
TEMPLATE_STRINGS = sorted({t for s in default_services().values() for t in s.prefetch.values()})


@st.composite
def demo_requests(draw: st.DrawFn) -> dict[str, Any]:
    """The integrators' demo: its page and its JSON API (on when DEMO is set)."""
    names = st.sampled_from(FIXTURE_NAMES) | text_values
    hooks = st.sampled_from([*HOOKS, "patient-view"]) | text_values
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return {"method": "GET", "path": draw(st.sampled_from(["/demo", "/demo/", "/demo/api/request"])),
                "query_string": "&".join(f"{key}={quote(value, safe='', errors='surrogatepass')}"
                                         for key, value in (("fixture", draw(names)), ("hook", draw(hooks))))}
    if kind == 1:
        body: Json = {"fixture": draw(names | scalars), "hook": draw(hooks | scalars)}
        if draw(st.booleans()):
            body["prefetch"] = draw(st.dictionaries(
                st.text(max_size=8), st.sampled_from(TEMPLATE_STRINGS) | text_values, max_size=4) | json_values)
        if draw(st.booleans()):
            body["fhirServer"] = draw(st.sampled_from(["https://fhir.example.org/r4", "http://x"]) | scalars)
        return {"method": "POST", "path": "/demo/api/request", "data": serialise(body),
                "content_type": "application/json"}
    if kind == 2:
        markdown = draw(text_values | st.sampled_from(
            ["# h\n[link](javascript:alert(1))", "<img src=x onerror=alert(1)>", "*" * 5000,
             "[" * 3000 + "]" * 3000, "> " * 2000, "- " * 2000 + "x", "`" * 1000, "| a |\n|---|\n" * 200]))
        return {"method": "POST", "path": "/demo/api/render-markdown",
                "data": serialise({"markdown": markdown}), "content_type": "application/json"}
    return {"method": "POST", "path": draw(st.sampled_from(["/demo/api/request", "/demo/api/render-markdown"])),
            "data": draw(garbage_bodies()), "content_type": "application/json"}


@fuzz_settings(max_examples=200)
@given(request=demo_requests())
def test_demo_endpoints(off_client: FlaskClient, request: dict[str, Any]) -> None:
    response = off_client.open(**request)
    check_response(response, request["method"], request["path"])


# -- AUTH=jwt ---------------------------------------------------------------------------------

REFUSED, ACCEPTED, EITHER = "refused", "accepted", "either"


@st.composite
def authorizations(draw: st.DrawFn, key: bytes, stranger: bytes, audience: str) -> tuple[str | None, str]:
    """(Authorization header or None, REFUSED / ACCEPTED / EITHER)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return None, REFUSED
    if kind == 1:
        return draw(header_text), REFUSED
    if kind == 2:
        return "Bearer " + draw(header_text), REFUSED
    if kind == 3:  # unsigned or wrongly signed tokens with any header and claims
        header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "jku", "crit", "x5u"]),
                                      scalars | st.sampled_from(["none", "HS256", "ES384", KID, "JWT"]),
                                      max_size=4))
        payload = draw(st.dictionaries(st.sampled_from(["iss", "aud", "exp", "iat", "nbf", "jti", "sub"]),
                                       scalars | st.sampled_from([ISSUER, audience]), max_size=6))
        signature = draw(st.binary(max_size=96))
        scheme = draw(st.sampled_from(["Bearer ", "bearer ", "Bearer  ", "JWT "]))
        return scheme + raw_token(header, payload, signature), REFUSED
    if kind == 4:
        return "Bearer " + ".".join(b64url(draw(st.binary(max_size=40))) for _ in range(3)), REFUSED
    claims: dict[str, Any] = {}
    aud = audience
    expectation = ACCEPTED
    if kind == 5:  # signed by a key the issuer never published (same kid)
        expectation = REFUSED
    elif kind == 6:  # one claim with any value: some of these are still fine (nbf 0, ...)
        claims = {draw(st.sampled_from(["aud", "exp", "iat", "jti", "iss", "nbf", "tenant"])): draw(scalars)}
        expectation = EITHER
    elif kind == 7:  # addressed to another endpoint
        aud = audience + draw(st.sampled_from(["x", "/feedback", "/../other"]))  # "/" alone is forgiven
        expectation = REFUSED
    try:
        token = mint_token(stranger if kind == 5 else key, alg="ES384", kid=KID, iss=ISSUER, aud=aud,
                           extra_claims=claims)
    except (TypeError, ValueError, OverflowError):  # PyJWT refuses some claim values on encode
        return None, REFUSED
    return "Bearer " + token, expectation


JWT_PATHS = ["/cds-services", "/cds-services/{id}", "/cds-services/{id}/feedback", "/cds-services/nope",
             "/healthz", "/readyz", "/openapi.json"]


@fuzz_settings(max_examples=400)
@given(data=st.data())
def test_jwt_mode(jwt_client: FlaskClient, apps: dict[str, Any], data: st.DataObject) -> None:
    service_id, base = BASE_REQUESTS[data.draw(st.integers(0, len(BASE_REQUESTS) - 1), label="base request")]
    path = data.draw(st.sampled_from(JWT_PATHS)).replace("{id}", service_id)
    method = "POST" if path.startswith("/cds-services/") else "GET"
    if data.draw(st.integers(0, 9)) == 0:
        method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    authorization, expectation = data.draw(
        authorizations(apps["key"], apps["stranger"], "http://localhost" + path))
    body: bytes | None = None
    if method == "POST":
        document: Json = copy.deepcopy(base) if not path.endswith("/feedback") else copy.deepcopy(
            data.draw(st.sampled_from(FEEDBACK_BASES)))
        if data.draw(st.booleans()):
            document = data.draw(mutated(document))
        body = serialise(document)
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = jwt_client.open(path, method=method, headers=headers, data=body,
                               content_type="application/json" if body is not None else None)
    answer = check_response(response, method, path)
    protected = path.startswith("/cds-services") and path != "/cds-services/nope"
    if not protected or response.status_code == 405:
        return
    if expectation == REFUSED:
        assert response.status_code == 401, (response.status_code, answer)
        assert answer == {"error": "unauthorized"}
    elif expectation == ACCEPTED:
        assert response.status_code != 401, answer


# -- schemathesis against the served OpenAPI document ---------------------------------------------

_EXTRA_MEMBERS = 2
_MAX_ITEMS = 3
_MAX_BARE_OBJECT_MEMBERS = 8


REQUEST_SCHEMAS = ("HookRequest", "HookRequestEnvelope", "OrderSelectContext", "OrderSignContext",
                   "FeedbackRequest")


def bounded_for_generation(schema: Json) -> Json:
    """A copy of a schema with sizes capped (``maxProperties`` / ``maxItems``) where it sets none.

    Only narrows what gets generated: every instance valid under the copy is valid under the original.
    hypothesis-jsonschema otherwise spends minutes per operation building (and discarding) huge
    free-form objects for the schemas' open ``additionalProperties``.
    """
    if isinstance(schema, list):
        return [bounded_for_generation(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_for_generation(value) for key, value in schema.items()}
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and out.get("additionalProperties") is not False and "maxProperties" not in out:
        out["maxProperties"] = (len(out["properties"]) + _EXTRA_MEMBERS if "properties" in out
                                else _MAX_BARE_OBJECT_MEMBERS)
    if out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = _MAX_ITEMS
    return out


def test_schemathesis_against_openapi(apps: dict[str, Any]) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import ALL_CHECKS
    from schemathesis.experimental import OPEN_API_3_1

    app: Flask = apps["off"]
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    components = document["components"]["schemas"]
    for name in REQUEST_SCHEMAS:  # responses are checked against the schemas as served
        components[name] = bounded_for_generation(components[name])
    was_enabled = OPEN_API_3_1.is_enabled
    OPEN_API_3_1.enable()
    try:
        schema = schemathesis.from_dict(
            document, app=app, validate_schema=True,
            data_generation_methods=[schemathesis.DataGenerationMethod.positive,
                                     schemathesis.DataGenerationMethod.negative])
        operations = [result.ok() for result in schema.get_all_operations()]
    finally:
        if not was_enabled:
            OPEN_API_3_1.disable()
    assert {op.verbose_name for op in operations} >= {
        "GET /cds-services", "POST /cds-services/{service_id}", "POST /cds-services/{service_id}/feedback",
        "GET /healthz", "GET /readyz"}
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        budget = 25 if operation.method.upper() == "POST" else 5

        @fuzz_settings(max_examples=budget)
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            body = case.body
            if isinstance(body, dict) and body.get("hook") in SERVICE_FOR_HOOK and case.path_parameters:
                # The document cannot tie the body's hook to the path's service id; do it here so
                # positive examples reach the service instead of stopping at "wrong hook".
                case.path_parameters["service_id"] = SERVICE_FOR_HOOK[body["hook"]]
            response = case.call_wsgi()
            case.validate_response(response, checks=ALL_CHECKS)
            check_response(response, operation.method.upper(), case.formatted_path)
            statuses.setdefault(operation.verbose_name, set()).add(response.status_code)

        run()
    assert 200 in statuses["POST /cds-services/{service_id}"], statuses
    # Valid feedback for a made-up card uuid is 404 (only cards this service issued get feedback: issue 15).
    assert statuses["POST /cds-services/{service_id}/feedback"] & {200, 404}, statuses
