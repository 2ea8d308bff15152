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


#: Everything after this line of a card file is its static rationale page (issue 13), not its detail.
RATIONALE_MARKER = "<!-- rationale -->"


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
            meta, body = split_front_matter(path.read_text(encoding="utf-8"), path.name)
            card_id = str(meta.get("id", ""))
            if card_id != path.stem:
                raise ContentError(f"{path.name}: front matter id {card_id!r} must equal the file name")
            try:
                card = CardContent(card_id, meta, normalise_body(body), path,
                                   catalog.text_env.from_string(str(meta.get("summary", ""))),
                                   env.from_string(normalise_body(body.split(RATIONALE_MARKER)[0])))
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
        for key in ("fact_line", "review_line", "approved_review_line", "attribution_line",
                    "data_note_line", "skipped_line", "data_notes_heading"):
            text = self.shared.get(key)
            if isinstance(text, str):
                self.shared_templates[key] = self.env.from_string(text)

    # -- governance ---------------------------------------------------------------------
    def compute_hash(self, card_id: str) -> str:
        """SHA-256 over what a clinician could see of the card or what triggers it."""
        card = self.cards[card_id]
        meta = {k: v for k, v in card.meta.items() if k != "approval"}
        parts: list[str] = [_canonical(meta), card.body]
        scope = [str(v) for v in self.shared.get("scope_valuesets", []) or []]
        for vs_id in sorted({str(v) for v in meta.get("valuesets", []) or []} | set(scope)):
            if vs_id in self.terminology:
                parts.append(_canonical(self.terminology[vs_id].resource))
            else:
                parts.append(f"missing-valueset:{vs_id}")
        for key in sorted(str(c) for c in meta.get("citations", []) or []):
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
