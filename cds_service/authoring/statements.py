"""The statements of a card text, for the citation rules of ``cards check`` and the review packet."""

from __future__ import annotations

import re
from collections.abc import Iterator

_PLACEHOLDER_LINE = re.compile(r"^\s*\{\{\s*(facts_used|data_notes)\s*\}\}\s*$")
_JINJA_TAG = re.compile(r"\{%.*?%\}|\{#.*?#\}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*])")


def statements(text: str) -> Iterator[str]:
    """The statements of a card text: each sentence of a bullet, a paragraph or a table row (headings,
    table headers and separators, and the ``facts_used``/``data_notes`` placeholders are not statements)."""
    table_header = True
    for raw in _JINJA_TAG.sub("", text).splitlines():
        line = raw.strip()
        if not line.startswith("|"):
            table_header = True
        if not line or line.startswith("#") or _PLACEHOLDER_LINE.match(line) or line.startswith("<!--"):
            continue
        if re.fullmatch(r"\*\*[^*]+\*\*:?", line):
            continue  # a bold heading such as **Why you are seeing this**
        if line.startswith("|"):
            if table_header or re.fullmatch(r"[|\-: ]+", line):
                table_header = False
                continue
            yield line
            continue
        line = re.sub(r"^([-*+]|\d+\.)\s+", "", line)
        yield from (part for part in _SENTENCE_END.split(line) if part.strip())
