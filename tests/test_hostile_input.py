"""Hostile input: every limit is answered with a 4xx and a JSON error body, never a 500.

Limits (settings): MAX_BODY_BYTES (413), MAX_JSON_DEPTH (400 too_deep), MAX_DRAFT_ORDERS
(400 too_many_draft_orders), MAX_PREFETCH_RESOURCES (400 too_many_prefetch_resources),
MAX_STRING_LENGTH (400 string_too_long); plus what is not JSON at all (400 invalid_json /
415), wrong methods (405 + Allow), unknown services (404), and the security headers every
response carries.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from issued import issue_cards
from werkzeug.test import TestResponse

from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture
from cds_service.engine.services import default_services

SERVICE_FOR_HOOK = {s.hook: s.id for s in default_services().values()}
SELECT = f"/cds-services/{SERVICE_FOR_HOOK['order-select']}"
SIGN = f"/cds-services/{SERVICE_FOR_HOOK['order-sign']}"
FEEDBACK = f"{SELECT}/feedback"
IVIG_FIXTURE = "pl7-ro52-rpild"  # an IVIG order that gets cards: the whole pipeline runs
FEEDBACK_BODY = {"feedback": [{"card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "overridden",
                               "outcomeTimestamp": "2026-11-22T10:05:31Z"}]}


def hook_request(hook: str = "order-select", fixture: str = IVIG_FIXTURE) -> dict[str, Any]:
    return build_request(load_fixture(fixture), hook)


def post(client: FlaskClient, path: str, body: Any, content_type: str = "application/json") -> TestResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, data=data, content_type=content_type)


def assert_error(response: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """A ``status`` answer with a JSON ``{"error": code, "detail"?: ...}`` body and the headers."""
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    assert response.mimetype == "application/json"
    body: dict[str, Any] = json.loads(response.get_data())
    assert isinstance(body.get("error"), str) and body["error"], body
    assert set(body) <= {"error", "detail"}, body
    if code is not None:
        assert body["error"] == code, body
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    return body


def nested(levels: int, kind: str = "object") -> str:
    """JSON text ``levels`` containers deep (objects, arrays or both alternating)."""
    opening, closing = [], []
    for level in range(levels):
        use_object = kind == "object" or (kind == "mixed" and level % 2 == 0)
        opening.append('{"a":' if use_object else "[")
        closing.append("}" if use_object else "]")
    inner = "1"
    return "".join(opening) + inner + "".join(reversed(closing))


def with_extension(request: dict[str, Any], levels: int, kind: str = "object") -> bytes:
    """The request's JSON text with an ``extension`` (a JSON object, as the schema wants) that is
    ``levels`` containers deep, as its last member: the whole text is 1 + ``levels`` deep."""
    text = json.dumps(request)
    assert text.endswith("}")
    extension = '{"x":' + nested(levels - 1, kind) + "}"
    return (text[:-1] + ', "extension": ' + extension + "}").encode()


def small_request(hook: str = "order-select") -> dict[str, Any]:
    """A valid request with only short strings (no IVIG order, no prefetch): answered {"cards": []}."""
    order = {"resourceType": "MedicationRequest", "id": "m1", "status": "draft", "intent": "order",
             "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "amoxicillin"}}
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": "p1",
                               "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": order}]}}
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/m1"]
    return {"hook": hook, "hookInstance": "d0c8b3a4-5c1e-4c6b-9a57-2f1f3f6f0a01", "context": context}


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(CONTENT_POLICY="all").test_client()


# -- body size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [SELECT, SIGN, FEEDBACK])
def test_body_larger_than_the_limit_is_413_json(make_app: Callable[..., Flask], path: str) -> None:
    client = make_app(MAX_BODY_BYTES=4096).test_client()
    body = json.dumps({"padding": "x" * 5000}).encode()
    assert_error(post(client, path, body), 413, "payload_too_large")


def test_default_body_limit_is_5_mib(client: FlaskClient) -> None:
    limit = 5 * 1024 * 1024
    too_big = b'{"a": "' + b"x" * (limit - 8) + b'"}'
    assert len(too_big) == limit + 1
    assert_error(post(client, SELECT, too_big), 413, "payload_too_large")


def test_body_at_the_limit_is_read(make_app: Callable[..., Flask]) -> None:
    request = hook_request()
    size = len(json.dumps(request).encode())
    client = make_app(MAX_BODY_BYTES=size, CONTENT_POLICY="all").test_client()
    assert post(client, SELECT, request).status_code == 200


# -- nesting -------------------------------------------------------------------------------------

def _depth_of(text: str) -> int:
    depth = deepest = 0
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', text):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


@pytest.mark.parametrize("kind", ["object", "array", "mixed"])
def test_nesting_deeper_than_max_json_depth_is_400_too_deep(client: FlaskClient, kind: str) -> None:
    request = hook_request()
    at_limit = with_extension(request, 63, kind)  # 1 (the request) + 63 = 64 = MAX_JSON_DEPTH
    assert _depth_of(at_limit.decode()) == 64
    assert post(client, SELECT, at_limit).status_code == 200
    over = with_extension(request, 64, kind)
    assert _depth_of(over.decode()) == 65
    assert_error(post(client, SELECT, over), 400, "too_deep")


def test_max_json_depth_is_a_setting(make_app: Callable[..., Flask]) -> None:
    request = hook_request()
    client = make_app(MAX_JSON_DEPTH=20, CONTENT_POLICY="all").test_client()
    assert post(client, SELECT, with_extension(request, 19)).status_code == 200
    assert_error(post(client, SELECT, with_extension(request, 20)), 400, "too_deep")


def test_brackets_inside_strings_are_not_nesting(client: FlaskClient) -> None:
    request = hook_request()
    request["context"]["extension"] = {"note": "[" * 500 + "{" * 500, "quoted": '\\"[[[' * 100}
    assert post(client, SELECT, request).status_code == 200


@pytest.mark.parametrize("levels", [10_000, 100_000])
@pytest.mark.parametrize("kind", ["object", "array", "mixed"])
@pytest.mark.parametrize("path", [SELECT, FEEDBACK])
def test_absurd_nesting_is_400_not_500(client: FlaskClient, path: str, kind: str, levels: int) -> None:
    assert_error(post(client, path, nested(levels, kind).encode()), 400, "too_deep")


def test_unclosed_deep_nesting_is_400(client: FlaskClient) -> None:
    assert_error(post(client, SELECT, b"[" * 200_000), 400)
    assert_error(post(client, SELECT, b'{"a":' * 100_000), 400)


# -- counts -----------------------------------------------------------------------------------------

def _with_draft_orders(request: dict[str, Any], count: int) -> dict[str, Any]:
    request = copy.deepcopy(request)
    entries = request["context"]["draftOrders"]["entry"]
    template = entries[0]["resource"]
    extra = []
    for index in range(count - len(entries)):
        order = copy.deepcopy(template)
        order["id"] = f"extra-{index}"
        extra.append({"resource": order})
    request["context"]["draftOrders"]["entry"] = entries + extra
    return request


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_too_many_draft_orders_is_400(make_app: Callable[..., Flask], hook: str) -> None:
    client = make_app(MAX_DRAFT_ORDERS=5, CONTENT_POLICY="all").test_client()
    path = SELECT if hook == "order-select" else SIGN
    request = hook_request(hook)
    assert post(client, path, _with_draft_orders(request, 5)).status_code == 200
    assert_error(post(client, path, _with_draft_orders(request, 6)), 400, "too_many_draft_orders")


def test_default_draft_order_limit_is_200(client: FlaskClient) -> None:
    request = hook_request("order-sign")
    assert post(client, SIGN, _with_draft_orders(request, 200)).status_code == 200
    assert_error(post(client, SIGN, _with_draft_orders(request, 201)), 400, "too_many_draft_orders")


def test_draft_order_count_is_checked_before_the_schema(client: FlaskClient) -> None:
    """100,000 entries are refused for their number, before 100,000 schema checks (seconds of CPU)."""
    request = hook_request("order-sign")
    request["context"]["draftOrders"]["entry"] = [{"resource": {"resourceType": "X"}}] * 100_000
    assert_error(post(client, SIGN, request), 400, "too_many_draft_orders")


def test_selection_count_is_bounded(client: FlaskClient) -> None:
    """Selections name draft orders: more of them than draft orders may be is refused, and fast."""
    request = hook_request("order-select")
    request["context"]["selections"] = ["MedicationRequest/x"] * 100_000  # 2.2 MB
    body = assert_error(post(client, SELECT, request), 400)
    assert body["error"] in ("too_many_selections", "too_many_draft_orders"), body


def _with_prefetch_entries(request: dict[str, Any], per_key: dict[str, int]) -> dict[str, Any]:
    request = copy.deepcopy(request)
    for key, count in per_key.items():
        request["prefetch"][key] = {
            "resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": {"resourceType": "Observation", "id": f"{key}-{i}", "status": "final"}}
                      for i in range(count)]}
    return request


def test_too_many_prefetch_resources_is_400(make_app: Callable[..., Flask]) -> None:
    client = make_app(MAX_PREFETCH_RESOURCES=10, CONTENT_POLICY="all").test_client()
    base = hook_request()
    base["prefetch"] = {k: v for k, v in base["prefetch"].items()
                        if k in ("myositisAntibodies", "conditions", "medications")}
    base["prefetch"]["myositisAntibodies"]["entry"] = base["prefetch"]["myositisAntibodies"]["entry"][:2]
    counted = sum(len(v["entry"]) for v in base["prefetch"].values())
    assert counted <= 10
    assert post(client, SELECT, base).status_code == 200
    over = _with_prefetch_entries(base, {"laboratory": 6, "safetyLabs": 5})
    assert_error(post(client, SELECT, over), 400, "too_many_prefetch_resources")


def test_default_prefetch_resource_limit_is_50000(client: FlaskClient) -> None:
    request = hook_request()
    request["prefetch"]["laboratory"] = {"resourceType": "Bundle", "type": "searchset",
                                         "entry": [{"resource": {"resourceType": "Basic"}}] * 50_001}
    assert_error(post(client, SELECT, request), 400, "too_many_prefetch_resources")


def test_feedback_item_count_is_bounded(client: FlaskClient) -> None:
    """A 5 MB body holds ~60,000 feedback items: stored one by one that took over a minute."""
    items = [dict(FEEDBACK_BODY["feedback"][0], card=f"card-{i}") for i in range(10_000)]
    body = assert_error(post(client, FEEDBACK, {"feedback": items}), 400)
    assert body["error"] == "too_many_feedback_items", body


# -- strings -----------------------------------------------------------------------------------------

@pytest.fixture
def short_strings(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(MAX_STRING_LENGTH=100, CONTENT_POLICY="all").test_client()


def test_string_longer_than_max_is_400(short_strings: FlaskClient) -> None:
    request = small_request()
    request["context"]["userId"] = "Practitioner/" + "x" * 87  # 100 characters
    assert post(short_strings, SELECT, request).status_code == 200
    request["context"]["userId"] += "x"
    assert_error(post(short_strings, SELECT, request), 400, "string_too_long")


def test_key_longer_than_max_is_400(short_strings: FlaskClient) -> None:
    request = small_request()
    request["context"]["extension"] = {"k" * 101: 1}
    assert_error(post(short_strings, SELECT, request), 400, "string_too_long")


@pytest.mark.parametrize("path", [SELECT, FEEDBACK])
def test_default_string_limit_is_a_million_characters(client: FlaskClient, path: str) -> None:
    body = {"feedback": [dict(FEEDBACK_BODY["feedback"][0], card="c" * 1_000_001)]}
    assert_error(post(client, path, body), 400, "string_too_long")


def test_escaped_quotes_do_not_hide_a_long_string(short_strings: FlaskClient) -> None:
    """``\\"`` inside a string does not end it: 60 + 1 + 60 characters are 121, over the limit."""
    request = small_request()
    request["context"]["extension"] = {"note": "x" * 60 + '"' + "x" * 60}
    assert_error(post(short_strings, SELECT, request), 400, "string_too_long")
    request["context"]["extension"] = {"note": ('x"' * 30) * 4}
    assert_error(post(short_strings, SELECT, request), 400, "string_too_long")


def test_the_limit_counts_characters_not_escapes(short_strings: FlaskClient) -> None:
    """50 characters written as \\u00e9 escapes (300 bytes of JSON text) are 50 characters."""
    request = small_request()
    request["context"]["extension"] = {"note": "é" * 50}
    text = json.dumps(request, ensure_ascii=True)
    assert "\\u00e9" * 50 in text
    assert post(short_strings, SELECT, text.encode()).status_code == 200


def test_long_runs_outside_strings_are_not_long_strings(short_strings: FlaskClient) -> None:
    """Numbers and brackets between two strings are not a string, however many there are."""
    request = small_request()
    request["context"]["extension"] = {"numbers": [0] * 200, "more": [[]] * 100}
    assert post(short_strings, SELECT, request).status_code == 200


# -- not JSON, not UTF-8, not numbers ------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    "{\"hook\": \"order-select\", \"x\": \"caf\xe9\"}".encode("latin-1"),
    json.dumps({"hook": "order-select"}).encode("utf-16"),
    b"\xff\xfe{}",
    b'{"a": "\xc0\xaf"}',  # overlong encoding of "/"
    b'{"a": "\xed\xa0\x80"}',  # a UTF-16 surrogate encoded as UTF-8 (CESU-8)
    b'{"a": "\xf4\x90\x80\x80"}',  # beyond U+10FFFF
])
@pytest.mark.parametrize("path", [SELECT, FEEDBACK])
def test_non_utf8_is_400(client: FlaskClient, path: str, body: bytes) -> None:
    assert_error(post(client, path, body), 400, "invalid_json")


@pytest.mark.parametrize("path", [SELECT, FEEDBACK])
@pytest.mark.parametrize("body", [b"", b"{", b"{}}", b"nul", b"{'a': 1}", b'{"a": 1,}', b"\x00", b"[1 2]"])
def test_invalid_json_is_400(client: FlaskClient, path: str, body: bytes) -> None:
    assert_error(post(client, path, body), 400)


@pytest.mark.parametrize("path", [SELECT, SIGN, FEEDBACK])
@pytest.mark.parametrize("body", [b"null", b"[]", b"1", b'"x"', b"true"])
def test_json_that_is_not_an_object_is_400(client: FlaskClient, path: str, body: bytes) -> None:
    assert_error(post(client, path, body), 400)


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\udc00b", "\\udc00\\ud800"])
@pytest.mark.parametrize("path", [SELECT, FEEDBACK])
def test_lone_surrogate_escapes_are_400_not_500(client: FlaskClient, path: str, escape: str) -> None:
    """json.loads accepts "\\ud800"; the str it makes cannot be written as UTF-8 (store, answer, log)."""
    if path == FEEDBACK:
        text = json.dumps(FEEDBACK_BODY).replace('"card": "', f'"card": "{escape}', 1)
    else:
        text = json.dumps(hook_request()).replace('"text": "', f'"text": "{escape}')
    assert_error(post(client, path, text.encode()), 400, "invalid_json")


def test_surrogate_pairs_are_fine(client: FlaskClient) -> None:
    body = json.loads(json.dumps(FEEDBACK_BODY))
    body["feedback"][0]["overrideReason"] = {"userComment": "💊 ok"}
    text = json.dumps(body, ensure_ascii=True)
    assert "\\ud83d\\udc8a" in text
    issue_cards(client.application, "ivig-order-select", body["feedback"][0]["card"])
    assert post(client, FEEDBACK, text.encode()).status_code == 200


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
@pytest.mark.parametrize("path", [SELECT, FEEDBACK])
def test_non_finite_numbers_are_not_json(client: FlaskClient, path: str, literal: str) -> None:
    """RFC 8259 has no NaN or Infinity (Python's parser takes them); 1e999 overflows to inf."""
    if path == FEEDBACK:
        text = json.dumps(dict(FEEDBACK_BODY, extension={"n": 0})).replace('"n": 0', f'"n": {literal}')
    else:
        text = re.sub(r'"value": [0-9.]+', f'"value": {literal}', json.dumps(hook_request()), count=1)
    assert_error(post(client, path, text.encode()), 400, "invalid_json")


def test_integer_with_too_many_digits_is_400(client: FlaskClient) -> None:
    text = re.sub(r'"value": [0-9.]+', '"value": ' + "7" * 5000, json.dumps(hook_request()), count=1)
    assert_error(post(client, SELECT, text.encode()), 400, "invalid_json")


_NON_FINITE_TEXT = re.compile(r"(?<![\w.])-?(?:nan|inf|NaN|Infinity)(?![\w])")


@pytest.mark.parametrize("value", ["1" + "0" * 400, "-" + "9" * 4000, '"NaN"', '"inf"', '"-Infinity"',
                                   '"1e999"', "4.9e-324", "-0.0"])
def test_huge_or_non_finite_values_never_reach_a_card(client: FlaskClient, value: str) -> None:
    """Every lab value, reference range and dose in the requests replaced: a 4xx or cards without
    'nan' / 'inf' in them, never a 500."""
    for name in list_fixtures():
        for hook, path in (("order-select", SELECT), ("order-sign", SIGN)):
            text = re.sub(r'"value": -?[0-9.]+(?:[eE][-+]?\d+)?', f'"value": {value}',
                          json.dumps(build_request(load_fixture(name), hook)))
            response = post(client, path, text.encode())
            assert response.status_code < 500, (name, hook, response.get_data()[:200])
            if response.status_code == 200:
                for card in response.get_json()["cards"]:
                    shown = card["summary"] + "\n" + card.get("detail", "")
                    assert not _NON_FINITE_TEXT.search(shown), (name, hook, _NON_FINITE_TEXT.search(shown))


def test_an_absurd_weight_does_not_print_infinite_doses(client: FlaskClient) -> None:
    """A finite but absurd weight (1e308 kg) made the dose lines read "= inf g" and
    "4.0000000000000004e+307 g/day": an implausible weight should be treated as no weight."""
    text = re.sub(r'"value": -?[0-9.]+', '"value": 1e308', json.dumps(hook_request("order-select",
                                                                                  "draft-order-client-quirks")))
    response = post(client, SELECT, text.encode())
    assert response.status_code == 200
    for card in response.get_json()["cards"]:
        shown = card["summary"] + "\n" + card.get("detail", "")
        assert not _NON_FINITE_TEXT.search(shown), shown[max(0, shown.find("inf") - 200):][:300]
        assert "e+307" not in shown and "e+308" not in shown


# -- content type, method, path -------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    "text/plain", "text/html", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/xml", "application/jsonx", "text/json", "", "application/octet-stream"])
@pytest.mark.parametrize("path", [SELECT, SIGN, FEEDBACK])
def test_non_json_content_type_is_415(client: FlaskClient, path: str, content_type: str) -> None:
    response = client.post(path, data=json.dumps(hook_request()), content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/fhir+json"])
def test_json_content_types_are_read(client: FlaskClient, content_type: str) -> None:
    response = client.post(SELECT, data=json.dumps(hook_request()), content_type=content_type)
    assert response.status_code == 200


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", SELECT, {"POST"}),
    ("PUT", SELECT, {"POST"}),
    ("DELETE", SIGN, {"POST"}),
    ("GET", FEEDBACK, {"POST"}),
    ("POST", "/cds-services", {"GET"}),
    ("DELETE", "/cds-services", {"GET"}),
    ("POST", "/healthz", {"GET"}),
    ("PATCH", "/readyz", {"GET"}),
    ("POST", "/openapi.json", {"GET"}),
])
def test_wrong_method_is_405_with_allow(client: FlaskClient, method: str, path: str, allowed: set[str]) -> None:
    response = client.open(path, method=method, json={})
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert response.get_json()["error"] == "method_not_allowed"
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/cds-services/no-such-service", "/cds-services/no-such-service/feedback",
                                  "/cds-services/" + "x" * 5000, "/cds-services/%00",
                                  "/cds-services/%2e%2e/x"])
def test_unknown_service_is_404_json(client: FlaskClient, path: str) -> None:
    body = assert_error(client.post(path, json=hook_request()), 404, "not_found")
    assert len(body.get("detail", "")) < 500


@pytest.mark.parametrize("path", ["/", "/nope", "/cds-services/ivig-order-select/feedback/x", "/.env",
                                  "/review/no-such-card"])
def test_unknown_path_is_404_json(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_order_sign_ignores_selections_of_any_shape(client: FlaskClient) -> None:
    """order-sign has no selections; whatever a client puts there must not break the call."""
    for selections in (5, None, "MedicationRequest/x", [None], [{"a": 1}], {"a": 1}, True):
        request = hook_request("order-sign")
        request["context"]["selections"] = selections
        response = post(client, SIGN, request)
        assert response.status_code == 200, (selections, response.get_data()[:200])


def test_error_details_do_not_echo_long_input(client: FlaskClient) -> None:
    request = hook_request("order-select")
    request["hook"] = "h" * 100_000
    body = assert_error(post(client, SELECT, request), 400)
    assert len(body.get("detail", "")) < 1000


# -- security headers ------------------------------------------------------------------------------------

def test_security_headers_on_every_response(make_app: Callable[..., Flask]) -> None:
    app = make_app(CONTENT_POLICY="all", MAX_BODY_BYTES=1_000_000, DEMO=True)
    client = app.test_client()
    request = hook_request()
    no_prefetch = build_request(load_fixture(IVIG_FIXTURE), "order-select", prefetch=False)
    answers = {
        "discovery": client.get("/cds-services"),
        "cards": post(client, SELECT, request),
        "412": post(client, SELECT, no_prefetch),
        "400": post(client, SELECT, b"{"),
        "404": post(client, "/cds-services/nope", request),
        "405": client.get(SELECT),
        "413": post(client, SELECT, b'"' + b"x" * 1_000_001 + b'"'),
        "415": client.post(SELECT, data="x", content_type="text/plain"),
        "feedback": post(client, FEEDBACK, FEEDBACK_BODY),
        "healthz": client.get("/healthz"),
        "readyz": client.get("/readyz"),
        "openapi": client.get("/openapi.json"),
        "not found": client.get("/nope"),
        "review": client.get("/review"),
        "demo": client.get("/demo"),
    }
    assert answers["412"].status_code == 412
    assert answers["413"].status_code == 413
    for name, response in answers.items():
        assert response.headers.get("X-Content-Type-Options") == "nosniff", name
    for name in ("discovery", "cards", "412", "400", "404", "405", "413", "415", "feedback"):
        assert answers[name].headers.get("Cache-Control") == "no-store", name
    html = {name: r for name, r in answers.items() if r.mimetype == "text/html"}
    assert set(html) >= {"review", "demo"}, {n: (r.status_code, r.mimetype) for n, r in answers.items()}
    for name, response in html.items():
        assert response.headers.get("X-Frame-Options") == "DENY", name
        assert "frame-ancestors 'none'" in response.headers.get("Content-Security-Policy", ""), name


def test_html_pages_get_frame_deny_wherever_they_come_from(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    @app.get("/_test/html")
    def html_page() -> str:
        return "<!doctype html><title>t</title>"

    response = app.test_client().get("/_test/html")
    assert response.mimetype == "text/html"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_401_answers_carry_the_headers(make_app: Callable[..., Flask]) -> None:
    from cds_service.devtools.keys import new_key_pair

    _, jwk = new_key_pair("ES384", "hostile-test")
    app = make_app(AUTH="jwt", TRUSTED_ISSUERS=json.dumps({"https://ehr.example.org": {"jwks": {"keys": [jwk]}}}))
    client = app.test_client()
    for response in (client.get("/cds-services"), post(client, SELECT, hook_request()),
                     post(client, FEEDBACK, FEEDBACK_BODY)):
        body = assert_error(response, 401, "unauthorized")
        assert body == {"error": "unauthorized"}
