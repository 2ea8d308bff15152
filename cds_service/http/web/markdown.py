"""Card Markdown to safe HTML: raw HTML in content or data is never passed through."""

from __future__ import annotations

from markdown_it import MarkdownIt
from markupsafe import Markup

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def render_markdown(text: str) -> Markup:
    # html=False: any <tag> in the source is shown as text; links keep markdown-it's URL validation
    # (javascript:, vbscript:, file: and data: other than images are refused).
    return Markup(_md.render(text or ""))  # noqa: S704 - html=False: the renderer escapes all raw HTML
