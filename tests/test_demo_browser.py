"""End to end in a real browser: Debian's Chromium, driven by Playwright, against the service on a
loopback port.  Load /demo, choose the PL-7 + Ro52 RP-ILD patient, fire, see the warning card,
override it with a reason and find the feedback row in the store; accept a suggestion; and check
that hostile fixture data never runs as HTML.

Skips (with the reason) when /usr/bin/chromium or Playwright is missing: `make test` installs
Chromium via apt when it may.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from loopback import LoopbackServer

from cds_service.devtools.fixtures import load_fixture
from cds_service.devtools.keys import new_key_pair
from cds_service.http.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT_MS = 20_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) to run the "
                "browser test", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")


class LiveService(LoopbackServer):
    """create_app on the loopback server (werkzeug, threaded), the way a browser would reach it."""

    def __init__(self, config: dict[str, Any]) -> None:
        with pytest.MonkeyPatch.context() as mp:
            for name in list(os.environ):
                if name.startswith("CDS_"):
                    mp.delenv(name)
            app: Flask = create_app(config)
        super().__init__(app=app, name="demo-live-service")
        self.url = self.origin
        self.start()

    @property
    def store(self) -> Any:
        return self.app.extensions["cds_runtime"].store

    def close(self) -> None:
        self.stop()
        self.store.close()


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return {"AUTH": "off", "PROFILE": "development", "CONTENT_POLICY": "all", "DEMO": True, "CORS_ORIGINS": "*",
            "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3", "LOG_LEVEL": "WARNING", **extra}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    # A CSP violation (inline script/style) or a script error shows up here.
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.problems = problems  # type: ignore[attr-defined]
    yield page
    context.close()


def _ready(page: Any) -> None:
    page.wait_for_selector("#demo[data-ready='true']")


def _fire(page: Any) -> None:
    page.click("#fire")
    page.wait_for_selector("#demo[data-state='rendered'], #demo[data-state='error']")
    state = page.get_attribute("#demo", "data-state")
    assert state == "rendered", page.text_content("#fire-status")


def test_fire_override_and_accept_from_the_demo_page(page: Any, tmp_path: Path) -> None:
    service = LiveService(_config(tmp_path))
    try:
        # Start on another patient, then choose the PL-7 + Ro52 RP-ILD one as a user would.
        page.goto(f"{service.url}/demo?fixture=mda5-dm-ild")
        _ready(page)
        with page.expect_navigation():
            page.select_option("#fixture", "pl7-ro52-rpild")
        _ready(page)
        assert page.input_value("#fixture") == "pl7-ro52-rpild"
        assert "PL-7" in page.text_content("#fixture-description")
        assert "Anti-PL-7 antibody" in page.text_content("#facts-antibodies")
        request = json.loads(page.input_value("#request-json"))
        assert request["hook"] == "order-select" and request["prefetch"]

        _fire(page)
        expected = load_fixture("pl7-ro52-rpild")["expected"]["order-select"]
        shown = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.cardId)")
        assert shown == expected
        indicators = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.indicator)")
        assert indicators == sorted(indicators, key=["critical", "warning", "info"].index)

        card = page.locator(".card[data-card-id='ivig-not-first-line']")
        assert card.get_attribute("data-indicator") == "warning"
        assert "No first-line immunosuppression" in card.locator(".card-summary").text_content()
        assert card.locator(".card-detail strong").count() > 0  # Markdown rendered, not shown raw
        assert card.locator(".card-source a").get_attribute("href").endswith("/cards/ivig-not-first-line")
        assert int(page.text_content("#latency")) >= 0
        assert page.text_content("#response-status") == "200"
        response = json.loads(page.text_content("#response-json"))
        assert [c["source"]["topic"]["code"] for c in response["cards"]] == expected

        # Override with a reason: a real `overridden` feedback call.
        card.locator("summary.override-toggle").click()
        reason = card.locator(".override-reason").first
        reason_code = reason.get_attribute("data-code")
        card.locator(".override-comment").fill("Discussed with rheumatology")
        reason.click()
        page.wait_for_selector(".card[data-card-id='ivig-not-first-line'] "
                               ".card-feedback-status[data-feedback-status='sent']")
        card_uuid = card.get_attribute("data-uuid")
        rows = service.store.feedback_rows(card_uuid)
        assert len(rows) == 1
        row = rows[0]
        assert row["outcome"] == "overridden" and row["service_id"] == "ivig-order-select"
        assert row["override_code"] == reason_code
        assert row["override_system"] == "https://ivig-cds.example.org/override-reason"
        assert row["user_comment"] == "Discussed with rheumatology"

        # Accept a suggestion on another card: `accepted` feedback with the suggestion's uuid. The PFT order
        # of ild-monitoring is offered only without recent PFTs (pl7-ro52-rpild has them): another patient.
        page.select_option("#fixture", "mda5-dm-ild")
        _fire(page)
        monitoring = page.locator(".card[data-card-id='ild-monitoring']")
        suggestion = monitoring.locator("button.suggestion").first
        suggestion_uuid = suggestion.get_attribute("data-suggestion-uuid")
        suggestion.click()
        page.wait_for_selector(".card[data-card-id='ild-monitoring'] "
                               ".card-feedback-status[data-feedback-status='sent']")
        accepted = service.store.feedback_rows(monitoring.get_attribute("data-uuid"))
        assert [r["outcome"] for r in accepted] == ["accepted"]
        assert json.loads(accepted[0]["accepted_suggestions"]) == [suggestion_uuid]

        page.screenshot(path=str(tmp_path / "demo-cards.png"), full_page=True)
        assert (tmp_path / "demo-cards.png").stat().st_size > 0
        assert page.problems == []  # type: ignore[attr-defined]
    finally:
        service.close()


def test_fire_at_a_typed_in_base_url(page: Any, tmp_path: Path) -> None:
    """The demo of one service fires at another one (CORS), prefetching for its discovered templates."""
    demo = LiveService(_config(tmp_path / "demo"))
    other = LiveService(_config(tmp_path / "other", DEMO=False))
    try:
        page.goto(f"{demo.url}/demo?fixture=safety-iga-low-critical&hook=order-sign")
        _ready(page)
        page.fill("#target-url", other.url + "/")
        _fire(page)
        shown = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.cardId)")
        assert shown == load_fixture("safety-iga-low-critical")["expected"]["order-sign"]
        assert page.get_attribute(".card", "data-indicator") == "warning"  # IgA deficiency alone (issue 12)
        assert page.text_content("#response-url") == f"POST {other.url}/cds-services/ivig-order-sign"
        # The other service gets the feedback.
        card = page.locator(".card").first
        card.locator("summary.override-toggle").click()
        card.locator(".override-dismiss").click()
        page.wait_for_selector(".card .card-feedback-status[data-feedback-status='sent']")
        assert [r["outcome"] for r in other.store.feedback_rows()] == ["overridden"]
        assert demo.store.feedback_rows() == []
        assert page.problems == []  # type: ignore[attr-defined]
    finally:
        other.close()
        demo.close()


def test_not_a_cds_service_and_a_jwt_service_are_reported(page: Any, tmp_path: Path) -> None:
    _, jwk = new_key_pair("ES384", "k1")
    trusted = json.dumps({"https://ehr.example.org": {"jwks": {"keys": [jwk]}}})
    service = LiveService(_config(tmp_path / "demo"))
    guarded = LiveService(_config(tmp_path / "guarded", AUTH="jwt", TRUSTED_ISSUERS=trusted, DEMO=False))
    try:
        page.goto(f"{service.url}/demo")
        _ready(page)
        page.fill("#target-url", f"{service.url}/demo/static")  # a path with no CDS service behind it
        page.click("#fire")
        page.wait_for_selector("#demo[data-state='error']")
        assert "not a CDS service" in page.text_content("#fire-status")
        assert page.locator(".card").count() == 0

        page.fill("#target-url", guarded.url)
        page.click("#fire")
        page.wait_for_function("() => document.querySelector('#fire-status').textContent.includes('401')")
        assert "requires a signed client JWT" in page.text_content("#fire-status")
    finally:
        guarded.close()
        service.close()


def test_hostile_fixture_data_never_runs(page: Any, tmp_path: Path) -> None:
    fixture = copy.deepcopy(load_fixture("pl7-ro52-rpild"))
    fixture["name"] = "xss-patient"
    fixture["description"] = f"Hostile data {XSS}"
    for entry in fixture["record"]["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Condition" and resource["id"].endswith("ild-1"):
            resource["code"]["text"] = f"Interstitial lung disease {XSS}"
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "xss-patient.json").write_text(json.dumps(fixture), encoding="utf-8")
    service = LiveService(_config(tmp_path, FIXTURES_DIR=str(fixtures)))
    try:
        page.goto(f"{service.url}/demo?fixture=xss-patient")
        _ready(page)
        assert page.locator("img").count() == 0
        assert XSS in page.text_content("#fixture-description")  # shown as text
        _fire(page)
        card = page.locator(".card[data-card-id='ivig-not-first-line']")
        detail = card.locator(".card-detail")
        assert "onerror" in detail.text_content()  # the condition text reached the card, as text
        assert page.locator("img").count() == 0
        assert page.evaluate("() => document.querySelectorAll('[onerror]').length") == 0
        page.screenshot(path=str(tmp_path / "demo-xss.png"), full_page=True)
        assert page.problems == []  # type: ignore[attr-defined]  (no alert dialog, no CSP violation)
    finally:
        service.close()
