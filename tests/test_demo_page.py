"""The integrators' demo page through Flask's test client: listing, facts, request JSON, safety."""

from __future__ import annotations

import copy
import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape

from cds_service.devtools.fixtures import list_fixtures, load_fixture
from cds_service.engine.services import default_services
from cds_service.protocol.schema import first_error

XSS = "<img src=x onerror=alert(1)>"
DEMO = {"DEMO": True, "CONTENT_POLICY": "all", "CORS_ORIGINS": "*"}


@pytest.fixture
def demo(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(**DEMO).test_client()


def _page(client: FlaskClient, query: str = "") -> str:
    response = client.get("/demo" + query)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def write_xss_fixture(directory: Path) -> str:
    """A copy of the demo patient with markup in the description, a condition's text and a lab value."""
    fixture = copy.deepcopy(load_fixture("pl7-ro52-rpild"))
    fixture["name"] = "xss-patient"
    fixture["description"] = f"Hostile data {XSS} in several places"
    for entry in fixture["record"]["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Condition" and "ild" in resource["id"]:
            resource["code"]["text"] = f"Interstitial lung disease {XSS}"
        if resource["resourceType"] == "Observation" and resource["id"].endswith("ab-pl7-3"):
            resource["valueString"] = f"Strongly positive {XSS}"
            resource.pop("valueCodeableConcept", None)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "xss-patient.json").write_text(json.dumps(fixture), encoding="utf-8")
    return "xss-patient"


def test_demo_lists_every_fixture_with_its_description(demo: FlaskClient) -> None:
    page = _page(demo)
    names = list_fixtures()
    assert names
    for name in names:
        assert f'<option value="{name}"' in page, name
        assert str(escape(load_fixture(name)["description"])) in page, name
    # The default patient is the PL-7 + Ro52 RP-ILD fixture, with its key facts and request.
    assert '<option value="pl7-ro52-rpild" selected>' in page
    assert 'id="fixture"' in page and 'id="hook"' in page and 'id="fire"' in page and 'id="target-url"' in page


def test_demo_shows_key_facts_computed_from_the_record(demo: FlaskClient) -> None:
    page = _page(demo, "?fixture=pl7-ro52-rpild&hook=order-sign")
    facts = page[page.index('id="facts"'):page.index('id="request-panel"')]
    assert "Anti-PL-7 antibody" in facts and "strongly positive" in facts
    assert "Observation/fx-pl7-ro52-rpild-ab-pl7-3" in facts
    assert "Interstitial lung disease" in facts and "Condition/fx-pl7-ro52-rpild-ild-1" in facts
    assert "eGFR" in facts and "mL/min/1.73m2" in facts
    assert "MedicationRequest/fx-pl7-ro52-rpild-ivig" in facts  # the IVIG order in scope
    assert 'data-hook="order-sign"' in page and 'data-service-id="ivig-order-sign"' in page


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_the_request_shown_is_the_exact_valid_request(demo: FlaskClient, hook: str) -> None:
    page = _page(demo, f"?fixture=pl7-ro52-rpild&hook={hook}")
    textarea = re.search(r'<textarea id="request-json"[^>]*>(.*?)</textarea>', page, re.S)
    assert textarea
    request = json.loads(html.unescape(textarea.group(1)))
    assert first_error("request.json", request) is None
    assert request["hook"] == hook
    service = next(s for s in default_services().values() if s.hook == hook)
    assert set(request["prefetch"]) == set(service.prefetch)
    response = demo.post(f"/cds-services/{service.id}", json=request)
    assert response.status_code == 200
    cards = [c["source"]["topic"]["code"] for c in response.get_json()["cards"]]
    assert cards == load_fixture("pl7-ro52-rpild")["expected"][hook]


def test_the_page_runs_under_the_csp_without_inline_script_or_style(demo: FlaskClient) -> None:
    response = demo.get("/demo")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    page = response.get_data(as_text=True)
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers
    for asset in re.findall(r'(?:src|href)="(/demo/static/[^"]+)"', page):
        served = demo.get(asset)
        assert served.status_code == 200, asset
    js = demo.get("/demo/static/demo.js").get_data(as_text=True)
    assert "innerHTML" not in js.replace("innerHTML is never used", "")
    assert "insertAdjacentHTML" not in js and "document.write" not in js and "eval(" not in js


def test_demo_is_off_in_production(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=False).test_client()
    for path in ("/demo", "/demo/", "/demo/api/fixtures", "/demo/api/request?fixture=pl7-ro52-rpild",
                 "/demo/static/demo.js"):
        assert client.get(path).status_code == 404, path
    assert client.post("/demo/api/render-markdown", json={"markdown": "x"}).status_code == 404


def test_hostile_fixture_values_are_escaped(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    name = write_xss_fixture(tmp_path / "fixtures")
    client = make_app(FIXTURES_DIR=str(tmp_path / "fixtures"), **DEMO).test_client()
    page = _page(client, f"?fixture={name}")
    assert XSS not in page
    assert "<img" not in page
    escaped = str(escape(XSS))
    assert f"Hostile data {escaped}" in page  # description
    assert f"Interstitial lung disease {escaped}" in page  # condition text, in the facts table
    assert page.count(escaped) >= 3  # ... and in the request JSON shown


def test_render_markdown_never_passes_raw_html(demo: FlaskClient) -> None:
    markdown = (f"**Why** {XSS}\n\n<script>alert(2)</script>\n\n[click](javascript:alert(3)) "
                "[ok](https://example.org/x)\n\n- item `code`")
    response = demo.post("/demo/api/render-markdown", json={"markdown": markdown})
    assert response.status_code == 200
    rendered = response.get_json()["html"]
    assert "<img" not in rendered and "<script" not in rendered and 'href="javascript:' not in rendered
    assert "&lt;img src=x onerror=alert(1)&gt;" in rendered
    assert '<a href="https://example.org/x">ok</a>' in rendered
    assert "<strong>Why</strong>" in rendered and "<code>code</code>" in rendered


@pytest.mark.parametrize("body", [None, [], {"markdown": 5}, {"markdown": "x" * 200_001}])
def test_render_markdown_refuses_bad_input(demo: FlaskClient, body: Any) -> None:
    response = demo.post("/demo/api/render-markdown", json=body) if body is not None else demo.post(
        "/demo/api/render-markdown", data="not json", content_type="text/plain")
    assert response.status_code == 400
    assert response.get_json()["error"]


def test_api_fixtures_and_request(demo: FlaskClient) -> None:
    listed = demo.get("/demo/api/fixtures").get_json()
    assert [f["name"] for f in listed] == list_fixtures()
    assert all(f["description"] for f in listed)

    request = demo.get("/demo/api/request?fixture=mda5-dm-ild&hook=order-sign").get_json()
    assert request["hook"] == "order-sign" and "selections" not in request["context"]
    assert first_error("request.json", request) is None


def test_api_request_for_another_services_templates(demo: FlaskClient) -> None:
    templates = {"conds": "Condition?patient={{context.patientId}}",
                 "me": "Practitioner/{{userPractitionerId}}",
                 "odd": "Basic/{{context.noSuchToken}}"}  # a token the context cannot fill: left out
    response = demo.post("/demo/api/request", json={"fixture": "pl7-ro52-rpild", "hook": "order-select",
                                                    "prefetch": templates})
    assert response.status_code == 200
    request = response.get_json()
    assert set(request["prefetch"]) == {"conds", "me"}
    assert request["prefetch"]["conds"]["total"] == 2

    bad = demo.post("/demo/api/request", json={"fixture": "pl7-ro52-rpild", "prefetch": {"x": "not a url?"}})
    assert bad.status_code == 400


@pytest.mark.parametrize(("path", "status"), [
    ("/demo?fixture=no-such-patient", 404),
    ("/demo?fixture=../etc/passwd", 404),
    ("/demo?hook=patient-view", 400),
    ("/demo/api/request?fixture=no-such-patient", 404),
])
def test_bad_choices_are_refused(demo: FlaskClient, path: str, status: int) -> None:
    assert demo.get(path).status_code == status


def test_key_facts_show_issue12_context(demo: FlaskClient) -> None:
    """Assertion, indication, population, prior IVIG and glucocorticoids not counted are shown."""
    page = demo.get("/demo?fixture=i12-ivig-for-itp&hook=order-sign").get_data(as_text=True)
    assert "IVIG order indication" in page and "ITP" in page and "(other)" in page
    page = demo.get("/demo?fixture=i12-ild-provisional").get_data(as_text=True)
    assert "Possible diagnoses" in page
    page = demo.get("/demo?fixture=i12-premedication-steroid&hook=order-sign").get_data(as_text=True)
    assert "Glucocorticoids not counted" in page and "premedication" in page
    page = demo.get("/demo?fixture=i12-prior-ivig-stale-weight").get_data(as_text=True)
    assert "IVIG courses, last 12 months" in page
    page = demo.get("/demo?fixture=i12-child-jdm").get_data(as_text=True)
    assert "under adult age" in page
