"""Review pages for compliance reviewers (``/review``): every card's exact text, status, approval and codes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, render_template
from sqlalchemy.exc import SQLAlchemyError

from cds_service.authoring import review_packet
from cds_service.authoring.packet import with_usage
from cds_service.authoring.report import usage_rows
from cds_service.errors import NotFound
from cds_service.http.context import runtime
from cds_service.http.web.markdown import render_markdown

log = logging.getLogger("cds_service.http.web.review")

bp = Blueprint("review", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


# How far back the review page's usage figures (``cds-service report``'s) reach.
USAGE_DAYS = 90


def _packet() -> dict[str, Any]:
    rt = runtime()
    today = datetime.now(UTC).date()
    packet = review_packet(rt.catalog, rt.settings.FIXTURES_DIR, today=today)
    since = today - timedelta(days=USAGE_DAYS)
    try:
        rows = usage_rows(rt.store, rt.catalog, since)
    except SQLAlchemyError as exc:  # the store is down: the packet without figures, never a 500
        log.warning("review page: usage figures not read (%s)", type(exc).__name__)
        return packet
    return with_usage(packet, rows, since)


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
