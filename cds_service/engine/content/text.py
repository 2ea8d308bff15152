"""Templating for card content: Jinja environments that escape patient values for Markdown."""

from __future__ import annotations

import re
from typing import Any

from jinja2 import StrictUndefined
from markupsafe import Markup

from cds_service.engine.content.compiled import CardEnvironment

# Inline Markdown syntax is backslash-escaped; block syntax (#, >, -, +) cannot start a line here
# because values are always placed after a label and whitespace is collapsed.  "&" and "<" become
# entities (no HTML).  One pass, the same as the entities first and the escapes after: neither entity
# contains a character escaped.
_MD_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", **{c: "\\" + c for c in "\\`*_[]|~"}})
_MD_SPECIAL = re.compile(r"[&<\\`*_\[\]|~]")  # searched first: most values have none
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escaped(markdown: str) -> Markup:
    """Mark Markdown built by the engine from escaped values as safe to insert unescaped."""
    return Markup(markdown)  # noqa: S704 - every patient value inside went through md_escape


def md_escape(value: Any) -> str:
    """Patient data into Markdown: no HTML, no Markdown syntax (clients render raw HTML)."""
    text = str(value)
    if _MD_SPECIAL.search(text) is not None:
        text = text.translate(_MD_ESCAPES)
    return " ".join(text.split())


def _finalize(value: Any) -> Any:
    if type(value) is str:  # the most common value, first
        return md_escape(value)
    if isinstance(value, Markup):
        return value
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return md_escape(value)


def make_environment() -> CardEnvironment:
    """Markdown templates (card detail): every value escaped for Markdown and HTML."""
    return CardEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_finalize,
                           trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)


def _plain(value: Any) -> Any:
    if type(value) is str:
        return " ".join(_CONTROL.sub(" ", value).split())
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return " ".join(_CONTROL.sub(" ", str(value)).split())


def make_text_environment() -> CardEnvironment:
    """Plain-text templates (summary, suggestion labels, resources): no Markdown escaping."""
    return CardEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_plain,
                           trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)


