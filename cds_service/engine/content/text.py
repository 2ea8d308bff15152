"""Templating for card content: Jinja environments that escape patient values for Markdown."""

from __future__ import annotations

import re
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

# Inline Markdown syntax; block syntax (#, >, -, +) cannot start a line here because values are
# always placed after a label and whitespace is collapsed.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def escaped(markdown: str) -> Markup:
    """Mark Markdown built by the engine from escaped values as safe to insert unescaped."""
    return Markup(markdown)  # noqa: S704 - every patient value inside went through md_escape


def md_escape(value: Any) -> str:
    """Patient data into Markdown: no HTML, no Markdown syntax (clients render raw HTML)."""
    text = str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return " ".join(text.split())


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup):
        return value
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return md_escape(value)


def make_environment() -> SandboxedEnvironment:
    """Markdown templates (card detail): every value escaped for Markdown and HTML."""
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_finalize,
                                trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)


def _plain(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return " ".join(_CONTROL.sub(" ", str(value)).split())


def make_text_environment() -> SandboxedEnvironment:
    """Plain-text templates (summary, suggestion labels, resources): no Markdown escaping."""
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=_plain,
                                trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)


