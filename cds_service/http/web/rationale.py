"""The public rationale page of each card (``GET /cards/<card-id>``): evidence, full guidance, numbered
references, review state and disclaimer of the served content version.  No client token, no patient
data; registered always (cards link here from ``links`` and ``source.url``)."""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from cds_service.errors import NotFound
from cds_service.http.context import runtime
from cds_service.http.web.markdown import render_markdown

bp = Blueprint("rationale", __name__, template_folder="templates", static_folder="static",
               static_url_path="/rationale-static")


@bp.get("/cards/<card_id>")
def card_page(card_id: str) -> Response | tuple[str, int]:
    rt = runtime()
    if card_id not in rt.catalog.cards:
        message = f"no card with id {card_id[:100]!r}"
        if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
            return render_template("rationale.html", page=None, message=message), 404
        raise NotFound(message)
    page = rt.renderer.rationale(card_id)
    html = render_template("rationale.html", page=page, md=render_markdown, message=None)
    return Response(html, mimetype="text/html")
