"""Card content: load ``cards/*.md`` with ``_shared.yaml`` and ``references.yaml``, hash each card,
decide whether it may be served.  Rendering is ``content/render.py``.

Everything a clinician reads comes from ``cards/``; the engine only fills in patient facts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from cds_service.clinical.dates import parse_date
from cds_service.engine.content.text import make_environment, make_text_environment
from cds_service.terminology import Terminology

STATUSES = ("draft", "submitted", "under-review", "approved", "retired")
INDICATORS = ("info", "warning", "critical")
SEVERITY = {"info": 0, "warning": 1, "critical": 2}
SUMMARY_MAX = 140
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n?(.*)\Z", re.S)
CITATION = re.compile(r"\[([a-z0-9][a-z0-9-]*[a-z0-9])\](?!\()")
#: The line that ends a card's ``detail`` template; what follows is its static rationale page.
RATIONALE_MARKER = "<!-- rationale -->"
#: Markers that look like citations but are not references: ``[expert-opinion]`` labels a statement
#: as expert opinion; ``[record]`` marks a statement about this patient's record (no source needed).
EXPERT_OPINION = "expert-opinion"
RECORD = "record"
MARKERS = frozenset({EXPERT_OPINION, RECORD})
#: ``kind`` of a reference that is where a question came from (a seed), never evidence.
ORIGIN = "origin"


class ContentError(Exception):
    """Content that cannot be loaded (bad front matter, unknown placeholder, …)."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def split_front_matter(text: str, source: str = "") -> tuple[dict[str, Any], str]:
    match = _FRONT_MATTER.match(text.replace("\r\n", "\n"))
    if not match:
        raise ContentError(f"{source}: no YAML front matter between '---' lines")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an impossible date such as 2026-13-40
        raise ContentError(f"{source}: front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise ContentError(f"{source}: front matter must be a mapping")
    return meta, match.group(2)


def split_rationale(body: str) -> tuple[str, str]:
    """(detail template, rationale Markdown) of a card body split at ``<!-- rationale -->``."""
    text = body.replace("\r\n", "\n")
    detail, marker, rationale = text.partition(RATIONALE_MARKER)
    return detail, (rationale if marker else "")


def cited_keys(text: str) -> list[str]:
    """Reference keys cited in ``text`` as ``[key]``, in order of first use (markers excluded)."""
    return [k for k in dict.fromkeys(CITATION.findall(text)) if k not in MARKERS]


def normalise_body(body: str) -> str:
    lines = [line.rstrip() for line in body.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip() + "\n"


@dataclass
class CardContent:
    id: str
    meta: dict[str, Any]
    body: str
    path: Path
    summary_template: Template | None = None
    body_template: Template | None = None
    #: The static rationale page (Markdown, no template variables): what follows ``<!-- rationale -->``.
    rationale: str = ""

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "draft"))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", ""))

    @property
    def approval(self) -> dict[str, Any] | None:
        approval = self.meta.get("approval")
        return approval if isinstance(approval, dict) else None


@dataclass
class Withheld:
    card_id: str
    reason: str


@dataclass
class Catalog:
    directory: Path
    terminology: Terminology
    cards: dict[str, CardContent] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, terminology: Terminology | None = None) -> Catalog:
        directory = Path(directory)
        terminology = terminology or Terminology.load(directory / "valuesets")
        catalog = cls(directory, terminology)
        catalog.shared = _load_yaml(directory / "_shared.yaml")
        catalog.references = _load_yaml(directory / "references.yaml")
        env = make_environment()
        catalog.env = env
        for path in sorted(directory.glob("*.md")):
            if path.name.upper() == "README.MD" or path.name.startswith("_"):
                continue
            meta, text = split_front_matter(path.read_text(encoding="utf-8"), path.name)
            card_id = str(meta.get("id", ""))
            if card_id != path.stem:
                raise ContentError(f"{path.name}: front matter id {card_id!r} must equal the file name")
            body, rationale = split_rationale(text)
            try:
                card = CardContent(card_id, meta, normalise_body(body), path,
                                   catalog.text_env.from_string(str(meta.get("summary", ""))),
                                   env.from_string(normalise_body(body)),
                                   normalise_body(rationale) if rationale.strip() else "")
            except TemplateError as exc:
                raise ContentError(f"{path.name}: template error: {exc}") from None
            catalog.cards[card_id] = card
        catalog._compile_shared()
        for card_id in catalog.cards:
            catalog.hashes[card_id] = catalog.compute_hash(card_id)
        return catalog

    env: SandboxedEnvironment = field(default_factory=make_environment)
    text_env: SandboxedEnvironment = field(default_factory=make_text_environment)
    shared_templates: dict[str, Template] = field(default_factory=dict)

    def _compile_shared(self) -> None:
        for key in ("fact_line", "compact_fact_line", "data_note_line", "skipped_line", "data_notes_heading",
                    "compact_notes_line", "more_facts_line", "reviewed_label"):
            text = self.shared.get(key)
            if isinstance(text, str):
                env = self.text_env if key == "reviewed_label" else self.env
                self.shared_templates[key] = env.from_string(text)

    # -- governance ---------------------------------------------------------------------
    def compute_hash(self, card_id: str) -> str:
        """SHA-256 over what a clinician could see of the card or what triggers it."""
        card = self.cards[card_id]
        meta = {k: v for k, v in card.meta.items() if k != "approval"}
        parts: list[str] = [_canonical(meta), card.body, card.rationale]
        scope = [str(v) for v in self.shared.get("scope_valuesets", []) or []]
        for vs_id in sorted({str(v) for v in meta.get("valuesets", []) or []} | set(scope)):
            if vs_id in self.terminology:
                parts.append(_canonical(self.terminology[vs_id].resource))
            else:
                parts.append(f"missing-valueset:{vs_id}")
        cited = {str(c) for c in meta.get("citations", []) or []} | set(cited_keys(card.body + card.rationale))
        for key in sorted(cited):
            parts.append(_canonical(self.references.get(key)))
        parts.append(_canonical(self.shared))
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
        return digest.hexdigest()

    def approval_current(self, card: CardContent) -> bool:
        """Approved, and the approval was given to exactly the text served now."""
        approval = card.approval or {}
        return card.status == "approved" and approval.get("content_hash") == self.hashes[card.id]

    def servable(self, card_id: str, policy: str, today: date) -> str | None:
        """None when the card may be served under ``policy``, else the reason it is withheld."""
        card = self.cards.get(card_id)
        if card is None:
            return "no-content"
        if card.status == "retired":
            return "retired"
        if policy == "all":
            return None
        if card.status != "approved":
            return f"status-{card.status}"
        approval = card.approval
        if not approval or approval.get("content_hash") != self.hashes[card_id]:
            return "approval-hash-mismatch"
        due = card.meta.get("next_review_due")
        due_date = parse_date(due)
        if due_date is None or due_date < today:
            return "review-overdue"
        return None

    # -- citations -----------------------------------------------------------------------
    def is_origin(self, key: str) -> bool:
        ref = self.references.get(key)
        return isinstance(ref, dict) and ref.get("kind") == ORIGIN

    def citation_order(self, card_id: str) -> list[str]:
        """The card's evidence, numbered [1], [2] … in order of first use on its rationale page, then
        in its detail: only keys that exist in references.yaml and are evidence (never an origin seed)."""
        card = self.cards[card_id]
        keys = cited_keys(card.rationale) + cited_keys(card.body)
        return [k for k in dict.fromkeys(keys) if k in self.references and not self.is_origin(k)]

    def review_state(self, card: CardContent) -> str:
        """What the clinician is told about review: the approval (role, date, next review) when it is
        bound to the text served, else that the card is not yet clinically reviewed."""
        approval = card.approval or {}
        if self.approval_current(card):
            template = self.shared_templates.get("reviewed_label")
            if template is not None:
                return " ".join(template.render(
                    role=str(approval.get("role") or approval.get("reviewer") or ""),
                    date=str(approval.get("date", "")),
                    next_review=str(card.meta.get("next_review_due", ""))).split())
        return str(self.shared.get("unreviewed_label", ""))

    # -- lookups -------------------------------------------------------------------------
    def status_display(self, key: str | None) -> str:
        names = self.shared.get("status_display", {}) or {}
        return str(names.get(key, key or "")) if key else ""

    def short_label(self, key: str) -> str:
        """"Huapaya 2019": a reference's ``short`` field, else first author's surname and year."""
        ref = self.references.get(key)
        if not isinstance(ref, dict):
            return key
        if ref.get("short"):
            return str(ref["short"])
        authors = str(ref.get("authors") or "").strip()
        surname = authors.split(",")[0].split(" ")[0] if authors else ""
        year = str(ref.get("year") or "").strip()
        label = " ".join(part for part in (surname, year) if part)
        return label or key


def bibliographic(ref: dict[str, Any]) -> str:
    """A reference as one Vancouver-style string (authors. title. journal. year;volume:pages. doi. PMID.)."""
    parts: list[str] = []
    for key in ("authors", "title", "journal"):
        value = ref.get(key)
        if value:
            parts.append(str(value).strip().rstrip("."))
    when = str(ref.get("year") or "")
    if ref.get("volume"):
        when += f";{ref['volume']}"
    if ref.get("pages"):
        when += f":{ref['pages']}"
    if when:
        parts.append(when)
    if ref.get("doi"):
        parts.append(f"doi:{ref['doi']}")
    if ref.get("pmid"):
        parts.append(f"PMID: {ref['pmid']}")
    if ref.get("url") and not ref.get("doi") and not ref.get("pmid"):
        parts.append(str(ref["url"]))
    text = ""
    for part in parts:
        if text:
            text += " " if text.endswith((".", "?", "!")) else ". "
        text += part
    ends_with_url = bool(ref.get("url")) and text.endswith(str(ref.get("url")))
    return text + ("" if not text or ends_with_url or text.endswith((".", "?", "!")) else ".")


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ContentError(f"{path.name} is missing")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ContentError(f"{path.name}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ContentError(f"{path.name} must be a mapping")
    return data
