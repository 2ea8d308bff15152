"""The review pages: /review (the packet, live), /review/<card-id>, their stylesheet, and the packet cache."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from markupsafe import escape

from cds_service.authoring import approve, render_review_html, review_packet
from cds_service.engine.content import Catalog

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "cards"
FIXTURES = ROOT / "fixtures"
TODAY = datetime.now(UTC).date()
ROLE = "Consultant rheumatologist"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(CARDS)


@pytest.fixture
def review_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(CONTENT_POLICY="all")


def test_index_lists_every_card(review_app: Flask, catalog: Catalog) -> None:
    response = review_app.test_client().get("/review")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    for card_id, card in catalog.cards.items():
        assert f'href="/review/{card_id}"' in html
        assert f'id="card-{card_id}"' in html
        assert str(escape(card.meta["title"])) in html
    assert "Summary" in html and "summary-table" in html
    # Same-origin stylesheet only: the app's CSP forbids inline styles and the page needs no script.
    assert 'href="/static/review.css"' in html
    assert "<style" not in html and "style=" not in html and "<script" not in html


def test_card_page_shows_the_exact_text(review_app: Flask, catalog: Catalog) -> None:
    client = review_app.test_client()
    for card_id, card in catalog.cards.items():
        response = client.get(f"/review/{card_id}")
        assert response.status_code == 200, card_id
        html = response.get_data(as_text=True)
        assert f'id="card-{card_id}"' in html
        assert html.count('<article class="card"') == 1
        # The Markdown template as written, escaped, and the summary template.
        assert str(escape(card.body)) in html
        assert str(escape(str(card.meta["summary"]))) in html
        assert str(escape(str(card.meta["trigger"]).split()[0])) in html
        assert catalog.hashes[card_id] in html
        assert 'href="/review"' in html  # back to the index
        assert "status-submitted" in html
        # A rendering for a representative fixture patient.
        assert "Rendered for a representative patient" in html and "cds-detail" in html


def test_unknown_card_is_a_json_404(review_app: Flask) -> None:
    response = review_app.test_client().get("/review/no-such-card")
    assert response.status_code == 404
    assert response.is_json
    assert response.get_json()["error"] == "not_found"


def test_stylesheet_is_served(review_app: Flask) -> None:
    response = review_app.test_client().get("/static/review.css")
    assert response.status_code == 200
    assert response.mimetype == "text/css"
    assert b".badge" in response.data


def test_stale_approval_is_flagged_in_red(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    shutil.copytree(CARDS, cards)
    approve(cards, "ild-monitoring", "Dr Reviewer", TODAY, fixtures_dir=FIXTURES, role=ROLE)
    client = make_app(CARDS_DIR=str(cards)).test_client()
    html = client.get("/review/ild-monitoring").get_data(as_text=True)
    assert "status-approved" in html and "served under approved-only" in html
    assert "approval does not match current text" not in html

    text = (cards / "ild-monitoring.md").read_text(encoding="utf-8")
    (cards / "ild-monitoring.md").write_text(text.replace("**Why you are seeing this**", "**Why this card**"),
                                             encoding="utf-8")
    client = make_app(CARDS_DIR=str(cards)).test_client()
    html = client.get("/review/ild-monitoring").get_data(as_text=True)
    assert 'class="badge stale">approval does not match current text' in html
    index = client.get("/review").get_data(as_text=True)
    assert "row-stale" in index and "approval does not match current text" in index


def test_markdown_in_content_cannot_inject_html(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    shutil.copytree(CARDS, cards)
    path = cards / "ild-monitoring.md"
    path.write_text(path.read_text(encoding="utf-8").replace(
        "**Why you are seeing this**", "**Why you are seeing this** <script>alert(1)</script> "
        "[x](javascript:alert(2))"), encoding="utf-8")
    html = make_app(CARDS_DIR=str(cards), CONTENT_POLICY="all").test_client().get(
        "/review/ild-monitoring").get_data(as_text=True)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)" in html
    assert 'href="javascript:' not in html


def test_packet_is_computed_once_per_catalog(catalog: Catalog) -> None:
    first = review_packet(catalog, FIXTURES, TODAY)
    assert review_packet(catalog, FIXTURES, TODAY) is first
    other = Catalog.load(CARDS)
    assert review_packet(other, FIXTURES, TODAY) is not first


def test_packet_contents(catalog: Catalog) -> None:
    packet = review_packet(catalog, FIXTURES, TODAY)
    assert packet["today"] == TODAY.isoformat() and packet["generated"]
    assert [c["id"] for c in packet["cards"]] == sorted(catalog.cards)
    for card in packet["cards"]:
        source = catalog.cards[card["id"]]
        assert card["version"] == source.version and card["status"] == source.status
        assert card["owner"] and card["next_review_due"] and card["rationale"]["references"]
        assert card["hti1"]["developer"] and card["hti1"]["funding_source"]
        assert card["hti1"]["release_date"] and card["hti1"]["revision_date"]
        assert card["servable"] is False and card["withheld_explanation"]
        assert card["approval"] is None and card["approval_matches"] is None
        assert card["trigger"] and card["summary_template"] and card["body_source"] == source.body
        example = card["example"]
        assert example and example["fixture"] and "error" not in example, example
        assert len(example["summary"]) <= 140 and example["detail"]
        for vs in card["valuesets"]:
            assert not vs["missing"]
            for concept in vs["concepts"]:
                assert {"system", "code", "display", "confidence"} <= set(concept)
        if source.meta["indicator"] in ("warning", "critical"):
            assert card["override_reasons"]


def test_exported_page_links_within_the_file(catalog: Catalog) -> None:
    html = render_review_html(review_packet(catalog, FIXTURES, TODAY))
    assert "<style>" in html and "<link" not in html and "<script" not in html
    for card_id in catalog.cards:
        assert f'href="#card-{card_id}"' in html and f'id="card-{card_id}"' in html
    assert 'href="/review' not in html
