"""Plain data passed from the clinical engine to the content renderer."""

from __future__ import annotations

from dataclasses import dataclass, field

from cds_service.clinical.contract import CardId, Finding, TemplateVariables


@dataclass(frozen=True)
class Fact:
    """One patient fact a rule used, shown under *Why you are seeing this*.

    ``label`` is the value set title (content data); ``value_key`` a status key whose display
    text lives in ``cards/_shared.yaml`` (e.g. ``strong-positive``); ``value_text`` data taken
    from the record itself (a lab value with unit, a condition's own text).
    """

    label: str
    value_key: str | None = None
    value_text: str | None = None
    date: str | None = None
    reference: str | None = None


@dataclass
class Decision:
    """A card the rules decided to show, with the facts that made it fire."""

    card_id: CardId
    facts_used: list[Fact] = field(default_factory=list)
    findings: set[Finding] = field(default_factory=set)


@dataclass
class DataNote:
    """Something that could not be read or checked; text keyed in ``cards/_shared.yaml``."""

    kind: str  # "skipped-resource" | "failed-key"
    key: str  # reason key or prefetch key
    reference: str | None = None


@dataclass
class Evaluation:
    """Everything the renderer needs for one call."""

    decisions: list[Decision]
    variables: TemplateVariables
    notes: list[DataNote] = field(default_factory=list)
