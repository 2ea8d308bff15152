"""``cds-service cards export``: the review packet as one self-contained HTML file (or as JSON).

The page is the ``/review`` template rendered standalone: inline CSS, no scripts, no external assets,
links within the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from cds_service.authoring.packet import review_packet
from cds_service.authoring.problems import GovernanceError
from cds_service.engine.content import Catalog
from cds_service.http.web.markdown import render_markdown

# The review page's template and stylesheet: one page design for /review and the exported file.
_WEB = Path(__file__).resolve().parent.parent / "http" / "web"
TEMPLATES_DIR = _WEB / "templates"
STATIC_DIR = _WEB / "static"
FORMATS = ("html", "json")


def render_review_html(packet: Mapping[str, Any]) -> str:
    """The review packet as one self-contained HTML page (inline CSS, no scripts, no external assets)."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES_DIR)), autoescape=select_autoescape(["html"]))
    css = (STATIC_DIR / "review.css").read_text(encoding="utf-8")
    if "</" in css:
        raise GovernanceError("review.css may not contain '</'")
    return env.get_template("review.html").render(packet=packet, md=render_markdown, single=None,
                                                  standalone=True,
                                                  inline_css=Markup(css))  # noqa: S704 - our own stylesheet


def export(cards_dir: str | Path, fixtures_dir: str | Path, out: str | Path, fmt: str = "html",
           today: date | None = None) -> Path:
    """Write the review packet of ``cards_dir`` to ``out`` as ``fmt`` (html or json); the path written."""
    catalog = Catalog.load(Path(cards_dir))
    packet = review_packet(catalog, fixtures_dir, today)
    out = Path(out)
    if fmt == "json":
        text = json.dumps(packet, indent=2, ensure_ascii=False, default=str) + "\n"
    elif fmt == "html":
        text = render_review_html(packet)
    else:
        raise GovernanceError(f"unknown export format {fmt!r}: use html or json")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
