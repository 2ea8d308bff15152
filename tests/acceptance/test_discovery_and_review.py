"""Discovery (issue 2 item 3; spec §Discovery, §Prefetch tokens, §Prefetch query restrictions),
OpenAPI and health, and the cards' review metadata (issue 6).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask.testing import FlaskClient

from acceptance.patients import pl7_quantity_ro52_lineblot
from acceptance.support import CARD_IDS, SIGN, VALUESETS, call, check_response, hook_request, new_app, no_empty, render

TOKEN_RE = re.compile(r"\{\{(.*?)\}\}")
ALLOWED_TOKENS = {"context.patientId", "context.userId", "context.encounterId",
                  "userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}


def _value_set_codes(vs_id: str) -> list[tuple[str, str]]:
    resource = json.loads((VALUESETS / f"{vs_id}.json").read_text(encoding="utf-8"))
    return [(inc["system"], c["code"]) for inc in resource.get("compose", {}).get("include", [])
            for c in inc.get("concept", [])]


def test_discovery_lists_both_hooks_with_2_0_templates(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"services"}
    services = body["services"]
    assert sorted(s["hook"] for s in services) == ["order-select", "order-sign"]
    for service in services:
        no_empty(service, f"$.services[{service['id']}]")
        assert isinstance(service["id"], str) and re.match(r"^[A-Za-z0-9._~-]+$", service["id"])
        assert service["title"].strip() and service["description"].strip()
        assert isinstance(service["usageRequirements"], str)
        for key, template in service["prefetch"].items():
            tokens = TOKEN_RE.findall(template)
            assert tokens, f"{key}: a template without a context token cannot be patient-specific"
            assert set(tokens) <= ALLOWED_TOKENS, f"{key}: 2.0 tokens only, not {set(tokens) - ALLOWED_TOKENS}"
            assert template.count("{{") == template.count("}}") == len(tokens)
            path, _, query = template.partition("?")
            assert re.match(r"^[A-Z][A-Za-z]+(/\{\{context\.patientId\}\})?$", path), (key, path)
            if not query:
                assert "/" in path, f"{key}: a type search needs parameters"
                continue
            names = [pair.split("=", 1)[0] for pair in query.split("&")]
            assert len(names) == len(set(names)), f"{key}: a repeated parameter is merged by clients"
            for pair in query.split("&"):
                name, _, value = pair.partition("=")
                base, _, modifier = name.partition(":")
                assert modifier in ("", "in"), f"{key}: modifier {modifier} is outside the 2.0 query subset"
                assert "." not in base and not base.startswith(("_include", "_revinclude", "_has", "_elements")), name
                assert value, f"{key}: empty value for {name}"
                if base in ("date", "authoredon", "onset-date"):
                    assert re.match(r"^(eq|lt|gt|ge|le)", value), (key, pair)
        # the prefetch covers what issue 2 lists, generated from the value sets
        templates = list(service["prefetch"].values())
        assert any(t == "Patient/{{context.patientId}}" for t in templates)
        for resource_type in ("Condition", "MedicationRequest", "ServiceRequest", "Procedure"):
            assert any(t.startswith(f"{resource_type}?") for t in templates), resource_type
        observation_templates = " ".join(t for t in templates if t.startswith("Observation?"))
        for vs_id in ("antibody-jo1", "antibody-pl7", "antibody-pl12", "antibody-ej", "antibody-oj", "antibody-ro52",
                      "antibody-mda5", "lab-creatinine", "lab-egfr", "lab-iga", "lab-weight", "lab-fvc-pct",
                      "lab-dlco-pct"):
            for system, code in _value_set_codes(vs_id):
                assert f"{system}|{code}" in observation_templates, f"{vs_id} {code} is not prefetched"
        procedure = " ".join(t for t in templates if t.startswith("Procedure?"))
        for system, code in _value_set_codes("procedure-plasma-exchange"):
            assert f"{system}|{code}" in procedure or "code=" not in procedure


def test_discovery_templates_render_to_plain_queries(client: FlaskClient) -> None:
    for service in client.get("/cds-services").get_json()["services"]:
        for template in service["prefetch"].values():
            rendered = render(template, "acc-render-1")
            assert "{{" not in rendered and "}}" not in rendered and "acc-render-1" in rendered


def test_openapi_describes_the_endpoints(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert str(doc.get("openapi", "")).startswith("3.1")
    paths = " ".join(doc["paths"])
    assert "/cds-services" in doc["paths"] and "feedback" in paths


def test_health_endpoints(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.mimetype == "application/json"


def test_cards_link_their_review_page_and_carry_review_status(client: FlaskClient,
                                                             templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    response = client.post(SIGN, json=hook_request("order-sign", record, drafts, templates=templates["order-sign"]))
    assert response.headers.get("Cache-Control", "").find("no-store") >= 0
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    for c in check_response(response.get_json()):
        card_id = c["source"]["topic"]["code"]
        assert c["source"]["url"] == f"https://cds.acceptance.example.net/cards/{card_id}"
        assert "Not yet clinically reviewed — for evaluation only" in c["source"]["label"]
        assert {"label": "Evidence, full guidance and disclaimer", "type": "absolute",
                "url": f"https://cds.acceptance.example.net/cards/{card_id}"} in c["links"]
        extension = c.get("extension")
        assert isinstance(extension, dict) and len(extension) == 1
        (key, meta), = extension.items()
        assert "." in key, "extension names use reverse-domain notation"
        assert meta["cardId"] == card_id and meta["status"] == "submitted"
        assert re.match(r"^\d+\.\d+\.\d+$", meta["version"]) and re.match(r"^[0-9a-f]{64}$", meta["contentHash"])
        page = client.get(f"/review/{card_id}")
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert page.headers.get("X-Frame-Options") == "DENY"


def test_review_packet_lists_every_card(client: FlaskClient) -> None:
    page = client.get("/review")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers.get("X-Frame-Options") == "DENY"
    html = page.get_data(as_text=True)
    for card_id in CARD_IDS:
        assert card_id in html


def test_approved_only_withholds_unapproved_cards(clean_env: None, tmp_path: Path,
                                                  templates: dict[str, dict[str, str]]) -> None:
    strict = new_app(tmp_path, CONTENT_POLICY="approved-only").test_client()
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    assert call(strict, hook_request("order-sign", record, drafts, templates=templates["order-sign"])) == []
