"""Review pages for compliance reviewers (``/review``): every card's exact text, status, approval and codes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, render_template

from cds_service.authoring import review_packet
from cds_service.errors import NotFound
from cds_service.http.context import runtime
from cds_service.http.web.markdown import render_markdown

bp = Blueprint("review", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


def _packet() -> dict[str, Any]:
    rt = runtime()
    return review_packet(rt.catalog, rt.settings.FIXTURES_DIR, today=datetime.now(UTC).date())


@bp.get("/review")
def review_index() -> str:
    return render_template("review.html", packet=_packet(), md=render_markdown, single=None)


@bp.get("/review/<card_id>")
def review_card(card_id: str) -> str:
    packet = _packet()
    cards = [c for c in packet["cards"] if c["id"] == card_id]
    if not cards:
        raise NotFound(f"no card with id {card_id[:100]!r}")
    return render_template("review.html", packet=dict(packet, cards=cards), md=render_markdown,
                           single=card_id)
