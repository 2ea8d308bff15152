"""The assertion of a mention in free text: affirmed, negated, possible, family, historical.

``clinical`` reads text through the ``AssertionReader`` interface only; the engine passes in the
implementation (``engine/assertion.py``, medspaCy ConText with cue lists from
``cards/assertion-cues.yaml``).  ``AffirmingReader`` reads every mention as affirmed: for tools and
tests that do not exercise text assertions.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol


class Assertion(StrEnum):
    AFFIRMED = "affirmed"
    NEGATED = "negated"
    POSSIBLE = "possible"
    FAMILY = "family"
    HISTORICAL = "historical"


class AssertionReader(Protocol):
    def assertion(self, text: str, phrases: Sequence[str] = ()) -> Assertion:
        """The assertion of the mention of ``phrases`` (any of them) in ``text``; when none of them
        is found, of the text as a whole."""
        ...


class AffirmingReader:
    """Every mention affirmed (no NLP): the behaviour of a record without free-text qualifiers."""

    def assertion(self, text: str, phrases: Sequence[str] = ()) -> Assertion:
        return Assertion.AFFIRMED
