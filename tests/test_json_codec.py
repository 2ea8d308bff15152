"""The JSON codec on the wire (issue 16): orjson decodes requests and encodes answers.

What the decoder decides (duplicate keys, numbers past 64 bits, the 1,024-level cap) and that the
answers keep the bytes the standard library's encoder gave: UTF-8, no ASCII escaping, insertion
order, compact, one trailing newline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.engine.services import default_services

SERVICE_FOR_HOOK = {s.hook: s.id for s in default_services().values()}
SELECT = f"/cds-services/{SERVICE_FOR_HOOK['order-select']}"
IVIG_FIXTURE = "pl7-ro52-rpild"


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    """Every card servable (the fixture's cards are drafts), so answers carry cards."""
    return make_app(CONTENT_POLICY="all").test_client()


def _request() -> dict[str, Any]:
    return build_request(load_fixture(IVIG_FIXTURE), "order-select")


def _post(client: FlaskClient, text: str) -> Any:
    return client.post(SELECT, data=text.encode(), content_type="application/json")


def test_duplicate_keys_last_one_wins(client: FlaskClient) -> None:
    """Documented in protocol.parse_json: a repeated key takes its last value, silently."""
    text = json.dumps(_request())
    assert '"hook": "order-select"' in text
    wrong_first = text.replace('"hook": "order-select"', '"hook": "order-sign", "hook": "order-select"', 1)
    assert _post(client, wrong_first).status_code == 200
    wrong_last = text.replace('"hook": "order-select"', '"hook": "order-select", "hook": "order-sign"', 1)
    response = _post(client, wrong_last)
    assert response.status_code == 400
    assert response.get_json()["error"] == "wrong_hook"


def test_a_repeated_context_key_takes_the_last_value(client: FlaskClient) -> None:
    """The same rule inside context: the last patientId is the one the call is about."""
    request = _request()
    patient = request["context"]["patientId"]
    text = json.dumps(request).replace(f'"patientId": "{patient}"',
                                       f'"patientId": "someone-else", "patientId": "{patient}"', 1)
    first = _post(client, json.dumps(request))
    second = _post(client, text)
    assert first.status_code == second.status_code == 200
    assert [c["summary"] for c in first.get_json()["cards"]] == [c["summary"] for c in second.get_json()["cards"]]
    assert first.get_json()["cards"], "the fixture gets cards: the whole pipeline ran"


@pytest.mark.parametrize(("levels", "code"), [(1_023, "too_deep"), (1_025, "too_deep"), (5_000, "too_deep")])
def test_depth_either_side_of_the_decoders_cap_is_too_deep(client: FlaskClient, levels: int, code: str) -> None:
    """orjson stops at 1,024 levels itself; below that MAX_JSON_DEPTH (64) decides: both are too_deep."""
    text = '{"a":' * levels + "1" + "}" * levels
    response = _post(client, text)
    assert response.status_code == 400
    assert response.get_json()["error"] == code


def test_an_integer_past_64_bits_is_read_not_refused(client: FlaskClient) -> None:
    """2**64 does not fit orjson's integers; it fits a double, and the call is answered."""
    request = _request()
    request["context"]["extension"] = {"n": 0}
    text = json.dumps(request).replace('"n": 0', '"n": 18446744073709551616')
    assert _post(client, text).status_code == 200


def test_answers_are_utf8_compact_unescaped_with_a_newline(client: FlaskClient) -> None:
    response = _post(client, json.dumps(_request()))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    raw = response.get_data()
    body = json.loads(raw)
    assert body["cards"]
    # The bytes the standard library gives with Flask's settings used before (ensure_ascii off,
    # insertion order, compact separators, a trailing newline).
    expected = json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n"
    assert raw == expected.encode("utf-8")
    assert int(response.headers["Content-Length"]) == len(raw)


def test_non_ascii_in_an_answer_is_written_as_utf8(client: FlaskClient) -> None:
    """An error detail carrying a non-ASCII service id: UTF-8 bytes, not \\u escapes."""
    response = client.post("/cds-services/ivig-é", data=b"{}", content_type="application/json")
    assert response.status_code == 404
    raw = response.get_data()
    assert "é".encode() in raw and b"\\u00e9" not in raw
    assert raw.endswith(b"}\n")


@pytest.fixture
def limited(make_app: Callable[..., Flask]) -> FlaskClient:
    """A string limit large enough for the window pre-check (protocol._may_hold_long_string) to run."""
    return make_app(CONTENT_POLICY="all", MAX_STRING_LENGTH=20_000).test_client()


@pytest.mark.parametrize("note", ["x" * 20_001, 'x"' * 10_001, "\\" * 20_001, "é" * 20_001,
                                  "x" * 9_999 + '"' + "x" * 10_001])
def test_a_long_string_in_a_large_body_is_refused(limited: FlaskClient, note: str) -> None:
    request = _request()
    request["context"]["extension"] = {"pad": ["short"] * 20_000, "note": note}
    response = _post(limited, json.dumps(request))
    assert response.status_code == 400
    assert response.get_json()["error"] == "string_too_long"


def test_a_large_body_of_short_strings_is_not_a_long_string(limited: FlaskClient) -> None:
    request = _request()
    request["context"]["extension"] = {"pad": ["short"] * 20_000, "note": "x" * 20_000,
                                       "numbers": list(range(10_000))}
    assert len(json.dumps(request)) > 200_000
    assert _post(limited, json.dumps(request)).status_code == 200
