"""A CDS Hooks card as this service issues it: typed, with its content identity.

``Card.to_json()`` is the wire form (CDS Hooks 2.0 card + this service's extension carrying the
card id, content version, content hash and review status).  ``CardIdentity.of(json)`` reads the
identity back from any card JSON (``fire``, the audit trail, the review packet, tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``source.topic.system`` of every card: ``source.topic.code`` is the card id.
CARD_SYSTEM = "https://ivig-cds.example.org/card"
#: The key of this service's card extension.
EXTENSION_KEY = "org.example.ivig-cds"
#: CDS Hooks indicators, most urgent first: the order cards are returned in.
INDICATOR_ORDER = {"critical": 0, "warning": 1, "info": 2}


def indicator_rank(indicator: object) -> int:
    return INDICATOR_ORDER.get(str(indicator), len(INDICATOR_ORDER))


@dataclass(frozen=True)
class CardIdentity:
    """Which content a card shows: id, version, content hash, review status."""

    card_id: str
    version: str
    content_hash: str
    status: str

    def audit(self, uuid: str) -> dict[str, str]:
        return {"uuid": uuid, "cardId": self.card_id, "version": self.version, "contentHash": self.content_hash}

    @classmethod
    def of(cls, card: Mapping[str, Any]) -> CardIdentity | None:
        """The identity of a card JSON issued by this service (None for anyone else's card)."""
        extension = card.get("extension")
        ours = extension.get(EXTENSION_KEY) if isinstance(extension, Mapping) else None
        if isinstance(ours, Mapping) and isinstance(ours.get("cardId"), str):
            return cls(str(ours["cardId"]), str(ours.get("version", "")), str(ours.get("contentHash", "")),
                       str(ours.get("status", "")))
        source = card.get("source")
        topic = source.get("topic") if isinstance(source, Mapping) else None
        if isinstance(topic, Mapping) and topic.get("system") == CARD_SYSTEM and isinstance(topic.get("code"), str):
            return cls(str(topic["code"]), "", "", "")
        return None


@dataclass
class Card:
    """One card of a response."""

    uuid: str
    summary: str
    detail: str
    indicator: str
    source: dict[str, Any]
    identity: CardIdentity
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    selection_behavior: str | None = None
    override_reasons: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    #: The summary as written before it was cut to 140 characters (content checks read it).
    full_summary: str = ""

    @property
    def card_id(self) -> str:
        return self.identity.card_id

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"uuid": self.uuid, "summary": self.summary, "detail": self.detail,
                                "indicator": self.indicator, "source": self.source}
        if self.suggestions:
            body["suggestions"] = self.suggestions
            body["selectionBehavior"] = self.selection_behavior or "at-most-one"
        if self.override_reasons:
            body["overrideReasons"] = self.override_reasons
        if self.links:
            body["links"] = self.links
        body["extension"] = {EXTENSION_KEY: {"cardId": self.identity.card_id, "version": self.identity.version,
                                             "contentHash": self.identity.content_hash,
                                             "status": self.identity.status}}
        return body


def sort_cards(cards: list[Card]) -> list[Card]:
    """Most urgent first; stable within an indicator."""
    return sorted(cards, key=lambda c: indicator_rank(c.indicator))
