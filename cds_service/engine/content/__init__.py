"""Card content: load ``cards/*.md``, hash it, decide whether it may be served, render it.

Everything a clinician reads comes from ``cards/`` (card files, ``_shared.yaml``,
``references.yaml``); this module only fills in patient facts, escaped for Markdown.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, Template
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from cds_service.clinical.model import DataNote, Decision, Fact
from cds_service.ids import new_uuid
from cds_service.terminology import Terminology

# An action.resourceId as response.json requires it: a relative reference Type/id.
_RESOURCE_ID = re.compile(r"^[A-Z][A-Za-z]+/[^/\s]+$")
CARD_SYSTEM = "https://ivig-cds.example.org/card"
EXTENSION_KEY = "org.example.ivig-cds"
STATUSES = ("draft", "submitted", "under-review", "approved", "retired")
INDICATORS = ("info", "warning", "critical")
SEVERITY = {"info": 0, "warning": 1, "critical": 2}
SUMMARY_MAX = 140
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n?(.*)\Z", re.S)
CITATION = re.compile(r"\[([a-z0-9][a-z0-9-]*[a-z0-9])\](?!\()")
# Inline Markdown syntax; block syntax (#, >, -, +) cannot start a line here because values are
# always placed after a label and whitespace is collapsed.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ContentError(Exception):
    """Content that cannot be loaded (bad front matter, unknown placeholder, …)."""


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
                                   env.from_string(normalise_body(body)))
            except Exception as exc:  # jinja2.TemplateSyntaxError and friends
                raise ContentError(f"{path.name}: template error: {exc}") from None
            catalog.cards[card_id] = card
        catalog._compile_shared()
        for card_id in catalog.cards:
            catalog.hashes[card_id] = catalog.compute_hash(card_id)
        return catalog

    env: SandboxedEnvironment = field(default_factory=make_environment)
    text_env: SandboxedEnvironment = field(default_factory=make_text_environment)
    _shared_templates: dict[str, Template] = field(default_factory=dict)
    _structure_templates: dict[str, Template] = field(default_factory=dict)
    _static: dict[tuple[str, str], Any] = field(default_factory=dict)

    def _compile_shared(self) -> None:
        for key in ("fact_line", "review_line", "approved_review_line", "attribution_line",
                    "data_note_line", "skipped_line", "data_notes_heading"):
            text = self.shared.get(key)
            if isinstance(text, str):
                self._shared_templates[key] = self.env.from_string(text)

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

    # -- rendering ----------------------------------------------------------------------
    def status_display(self, key: str | None) -> str:
        names = self.shared.get("status_display", {}) or {}
        return str(names.get(key, key or "")) if key else ""

    def render_fact(self, fact: Fact) -> str:
        template = self._shared_templates.get("fact_line")
        shown = self.status_display(fact.value_key)
        if fact.value_text and shown and fact.value_text.strip().lower() != shown.strip().lower() \
                and fact.value_text.strip().lower() != str(fact.value_key).lower():
            shown = f"{shown} ({fact.value_text})"
        values = {"label": fact.label, "value": shown or fact.value_text or "", "raw": fact.value_text or "",
                  "date": fact.date or "", "reference": fact.reference or ""}
        if template is None:
            return f"- {md_escape(fact.label)}"
        return template.render(**values).strip()

    def render_notes(self, card_id: str, notes: list[DataNote]) -> Markup:
        lines: list[str] = []
        data_notes = self.shared.get("data_notes", {}) or {}
        skipped = self.shared.get("skipped_reasons", {}) or {}
        seen: set[str] = set()
        for note in notes:
            if note.kind == "failed-key":
                entry = data_notes.get(note.key)
                if not isinstance(entry, dict) or card_id not in (entry.get("affects") or []):
                    continue
                template = self._shared_templates.get("data_note_line")
                text = str(entry.get("text", ""))
                line = template.render(text=escaped(md_escape(text))) if template else f"- {md_escape(text)}"
            else:
                template = self._shared_templates.get("skipped_line")
                reason = str(skipped.get(note.key, skipped.get("unexpected-type", note.key)))
                if template:
                    line = template.render(reason=reason, reference=note.reference or "")
                else:
                    prefix = f"`{md_escape(note.reference)}`: " if note.reference else ""
                    line = f"- {prefix}{md_escape(reason)}"
            line = line.strip()
            if line and line not in seen:
                seen.add(line)
                lines.append(line)
        if not lines:
            return escaped("")
        heading = self._shared_templates.get("data_notes_heading")
        head = heading.render().strip() if heading else ""
        return escaped("\n".join([head, ""] + lines if head else lines))

    def _link_citations(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            ref = self.references.get(match.group(1))
            if not isinstance(ref, dict):
                return match.group(0)
            label = self.short_label(match.group(1))
            url = ref.get("url")
            return f"[{label}]({url})" if url else f"({label})"

        return CITATION.sub(replace, text)

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

    def _render_structure(self, value: Any, context: Mapping[str, Any]) -> Any:
        if isinstance(value, str):
            if "{{" in value or "{%" in value:
                template = self._structure_templates.get(value)
                if template is None:  # compiled once per distinct string, not per call
                    template = self._structure_templates[value] = self.text_env.from_string(value)
                return template.render(**context).strip()
            return value
        if isinstance(value, list):
            return [self._render_structure(v, context) for v in value]
        if isinstance(value, dict):
            return {k: self._render_structure(v, context) for k, v in value.items()}
        if isinstance(value, date):
            return value.isoformat()
        return value

    def _expand_actions(self, actions: list[Any], context: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Render actions; ``for_each: <list variable>`` repeats an action once per item, with the
        item bound to ``item`` (e.g. one delete per IVIG draft order)."""
        rendered: list[dict[str, Any]] = []
        for action in actions:
            if not isinstance(action, dict):
                continue
            body = {k: v for k, v in action.items() if k != "for_each"}
            loop = action.get("for_each")
            if loop:
                items = context.get(str(loop)) or []
                for value in items if isinstance(items, list) else []:
                    rendered.append(self._render_structure(copy.deepcopy(body), {**context, "item": value}))
            else:
                rendered.append(self._render_structure(copy.deepcopy(body), context))
        return rendered

    def indicator(self, card: CardContent, findings: set[str]) -> str:
        indicator = str(card.meta.get("indicator", "info"))
        for finding, override in (card.meta.get("indicator_rules") or {}).items():
            if finding in findings and SEVERITY.get(str(override), -1) > SEVERITY.get(indicator, 0):
                indicator = str(override)
        return indicator

    def source_url(self, card_id: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/review/{card_id}"

    def render(self, decision: Decision, variables: Mapping[str, Any], notes: list[DataNote],
               base_url: str, policy: str) -> dict[str, Any]:
        card = self.cards[decision.card_id]
        facts_md = escaped("\n".join(self.render_fact(f) for f in merge_facts(decision.facts_used)))
        context = dict(variables)
        context.update(facts_used=facts_md, findings=frozenset(decision.findings),
                       data_notes=self.render_notes(card.id, notes))
        assert card.summary_template is not None and card.body_template is not None
        summary = " ".join(card.summary_template.render(**context).split())
        if len(summary) > SUMMARY_MAX:
            summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
        detail = self._link_citations(card.body_template.render(**context).strip())
        detail = re.sub(r"\n{3,}", "\n\n", detail)
        status_lines = self._static.get(("status", card.id))
        if status_lines is None:  # the same for every call: rendered once per loaded catalogue
            status_lines = self._static[("status", card.id)] = self._status_lines(card, policy)
        detail += "\n\n" + status_lines
        label = str(self.shared.get("source_label", "ivig-cds"))
        if not self.approval_current(card):
            label = f"{label} — {self.shared.get('pending_label', '')}".rstrip(" —")
        rendered: dict[str, Any] = {
            "uuid": new_uuid(),
            "summary": summary,
            "detail": detail,
            "indicator": self.indicator(card, decision.findings),
            "source": {
                "label": label,
                "url": self.source_url(card.id, base_url),
                "topic": {"system": CARD_SYSTEM, "code": card.id,
                          "display": str(card.meta.get("title", card.id))},
            },
        }
        suggestions = []
        for suggestion in card.meta.get("suggestions", []) or []:
            rendered_s = self._render_structure(
                {k: v for k, v in suggestion.items() if k != "actions"}, context)
            item: dict[str, Any] = {"label": rendered_s.get("label"), "uuid": new_uuid()}
            if rendered_s.get("is_recommended"):
                item["isRecommended"] = True
            actions = []
            for action in self._expand_actions(suggestion.get("actions", []) or [], context):
                out: dict[str, Any] = {"type": action.get("type"), "description": action.get("description")}
                if action.get("resource_id"):
                    out["resourceId"] = action["resource_id"]
                if action.get("resource"):
                    out["resource"] = action["resource"]
                if out["type"] == "delete" and not _RESOURCE_ID.match(str(out.get("resourceId") or "")):
                    continue  # nothing to delete: no draft order, or one whose id is no usable Type/id
                actions.append(out)
            if actions:
                item["actions"] = actions
                suggestions.append(item)
        if suggestions:
            rendered["suggestions"] = suggestions
            rendered["selectionBehavior"] = str(card.meta.get("selection_behavior", "at-most-one"))
        reasons_system = str(self.shared.get("override_reason_system", ""))
        reasons = [{"system": reasons_system, "code": str(r["code"]), "display": str(r["display"])}
                   for r in card.meta.get("override_reasons", []) or [] if isinstance(r, dict)]
        if reasons:
            rendered["overrideReasons"] = reasons
        links = self._static.get(("links", card.id))
        if links is None:
            links = self._static[("links", card.id)] = self.links(card)
        links = copy.deepcopy(links)
        if links:
            rendered["links"] = links
        rendered["extension"] = {EXTENSION_KEY: {"cardId": card.id, "version": card.version,
                                                 "contentHash": self.hashes[card.id], "status": card.status}}
        return rendered

    def links(self, card: CardContent) -> list[dict[str, Any]]:
        links: list[dict[str, Any]] = []
        seen: set[str] = set()
        for key in card.meta.get("citations", []) or []:
            ref = self.references.get(str(key))
            if isinstance(ref, dict) and isinstance(ref.get("url"), str) \
                    and ref["url"].startswith("https://") and ref["url"] not in seen:
                seen.add(ref["url"])
                links.append({"label": self.short_label(str(key)), "url": ref["url"], "type": "absolute"})
        for link in card.meta.get("links", []) or []:
            if isinstance(link, dict) and str(link.get("url", "")).startswith("https://") \
                    and link["url"] not in seen:
                seen.add(link["url"])
                links.append({"label": str(link.get("label")), "url": link["url"], "type": "absolute"})
        return links

    def _status_lines(self, card: CardContent, policy: str) -> str:
        meta = card.meta
        lines = []
        if not self.approval_current(card):
            pending = self.shared.get("pending_line")
            if pending:
                lines.append(f"**{md_escape(pending)}**")
        review = self._shared_templates.get("review_line")
        if review is not None:
            approval = card.approval or {}
            lines.append(review.render(status=card.status, version=card.version,
                                       last_reviewed=str(meta.get("last_reviewed", "")),
                                       approval={"reviewer": str(approval.get("reviewer", "")),
                                                 "date": str(approval.get("date", ""))} if approval else None,
                                       content_hash=self.hashes[card.id][:12]).strip())
        attribution = self._shared_templates.get("attribution_line")
        if attribution is not None:
            citations = [self.short_label(str(k)) for k in meta.get("citations", []) or []]
            lines.append(attribution.render(developer=str(meta.get("developer", "")),
                                            funding_source=str(meta.get("funding_source", "")),
                                            release_date=str(meta.get("release_date", "")),
                                            revision_date=str(meta.get("revision_date", "")),
                                            citations=", ".join(citations)).strip())
        return "\n\n".join(line for line in lines if line)


def merge_facts(facts: list[Fact]) -> list[Fact]:
    """One line per resource: a Condition that is both "ILD" and "RP-ILD" is listed once."""
    merged: dict[tuple[str | None, str | None, str | None], Fact] = {}
    order: list[tuple[str | None, str | None, str | None]] = []
    for fact in facts:
        key = (fact.reference, fact.value_key, fact.value_text) if fact.reference else (None, fact.label, None)
        if key in merged:
            existing = merged[key]
            if fact.label not in existing.label.split(" · "):
                merged[key] = Fact(f"{existing.label} · {fact.label}", existing.value_key, existing.value_text,
                                   existing.date, existing.reference)
            continue
        merged[key] = fact
        order.append(key)
    return [merged[k] for k in order]


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


def parse_date(value: Any) -> date | None:
    """A YAML front-matter date (a date, a datetime or an ISO string), or None."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None
