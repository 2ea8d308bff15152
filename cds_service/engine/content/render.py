"""Render a decision into a card: the one render function, used by serving and by content checks."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from jinja2 import TemplateError
from markupsafe import Markup

from cds_service.clinical.contract import LOOP_ITEM, RenderVariables, TemplateVariables, template_context
from cds_service.clinical.model import DataNote, Decision, Fact
from cds_service.engine.content.catalog import CITATION, SEVERITY, SUMMARY_MAX, CardContent, Catalog
from cds_service.engine.content.text import escaped, md_escape
from cds_service.ids import new_uuid
from cds_service.protocol.card import CARD_SYSTEM, Card, CardIdentity

# An action.resourceId as response.json requires it: a relative reference Type/id.
_RESOURCE_ID = re.compile(r"^[A-Z][A-Za-z]+/[^/\s]+$")


class RenderError(Exception):
    """A card's template failed for this context (content error: ``cards check`` reports it)."""

    def __init__(self, card_id: str, cause: BaseException) -> None:
        super().__init__(f"{card_id}: {type(cause).__name__}: {cause}")
        self.card_id = card_id
        self.cause = cause


class Renderer:
    """Renders the cards of one loaded catalogue; what does not depend on the patient is rendered once."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.shared = catalog.shared
        self.references = catalog.references
        self.hashes = catalog.hashes
        self._shared_templates = catalog.shared_templates
        self._structure_templates: dict[str, Any] = {}
        self._static: dict[tuple[str, str], Any] = {}

    def status_display(self, key: str | None) -> str:
        return self.catalog.status_display(key)

    def short_label(self, key: str) -> str:
        return self.catalog.short_label(key)

    def approval_current(self, card: CardContent) -> bool:
        return self.catalog.approval_current(card)

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

    def render_notes(self, card_id: str, notes: list[DataNote], fired: frozenset[str] = frozenset()) -> Markup:
        """What could not be read or checked.  A key's note goes to the cards it affects; when none
        of those fired, to every card that did, so that no unavailable key goes unmentioned."""
        lines: list[str] = []
        data_notes = self.shared.get("unavailable_data", {}) or {}
        skipped = self.shared.get("skipped_reasons", {}) or {}
        seen: set[str] = set()
        for note in notes:
            if note.kind == "failed-key":
                entry = data_notes.get(note.key)
                if not isinstance(entry, dict):
                    continue
                affects = set(entry.get("affects") or [])
                if card_id not in affects and (affects & fired or not fired):
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

    def _render_structure(self, value: Any, context: Mapping[str, Any]) -> Any:
        if isinstance(value, str):
            if "{{" in value or "{%" in value:
                template = self._structure_templates.get(value)
                if template is None:  # compiled once per distinct string, not per call
                    template = self._structure_templates[value] = self.catalog.text_env.from_string(value)
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
                    rendered.append(self._render_structure(copy.deepcopy(body), {**context, LOOP_ITEM: value}))
            else:
                rendered.append(self._render_structure(copy.deepcopy(body), context))
        return rendered

    def indicator(self, card: CardContent, findings: Iterable[str]) -> str:
        indicator = str(card.meta.get("indicator", "info"))
        for finding, override in (card.meta.get("indicator_rules") or {}).items():
            if finding in findings and SEVERITY.get(str(override), -1) > SEVERITY.get(indicator, 0):
                indicator = str(override)
        return indicator

    def source_url(self, card_id: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/review/{card_id}"

    def render(self, decision: Decision, variables: TemplateVariables, notes: list[DataNote],
               base_url: str, policy: str, patient_id: str | None = None, fired: Iterable[str] = ()) -> Card:
        """The card for ``decision``: patient values escaped, static parts rendered once.
        Raises ``RenderError`` when the card's own template fails for this context."""
        try:
            return self._render(decision, variables, notes, base_url, policy, patient_id, frozenset(fired))
        except (TemplateError, TypeError, ValueError, AttributeError, KeyError, ArithmeticError) as exc:
            raise RenderError(decision.card_id, exc) from exc

    def _render(self, decision: Decision, variables: TemplateVariables, notes: list[DataNote],
                base_url: str, policy: str, patient_id: str | None, fired: frozenset[str]) -> Card:
        card = self.catalog.cards[decision.card_id]
        facts_md = escaped("\n".join(self.render_fact(f) for f in merge_facts(decision.facts_used)))
        context = template_context(variables, RenderVariables(
            facts_used=facts_md, findings=frozenset(decision.findings),
            data_notes=self.render_notes(card.id, notes, fired), patient_id=patient_id))
        assert card.summary_template is not None and card.body_template is not None
        full_summary = " ".join(card.summary_template.render(**context).split())
        summary = full_summary
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
        links = self._static.get(("links", card.id))
        if links is None:
            links = self._static[("links", card.id)] = self.links(card)
        reasons_system = str(self.shared.get("override_reason_system", ""))
        suggestions = self._suggestions(card, context, frozenset(decision.findings))
        return Card(
            uuid=new_uuid(),
            summary=summary,
            detail=detail,
            indicator=self.indicator(card, decision.findings),
            source={"label": label, "url": self.source_url(card.id, base_url),
                    "topic": {"system": CARD_SYSTEM, "code": card.id,
                              "display": str(card.meta.get("title", card.id))}},
            identity=CardIdentity(card.id, card.version, self.hashes[card.id], card.status),
            suggestions=suggestions,
            selection_behavior=str(card.meta.get("selection_behavior", "at-most-one")) if suggestions else None,
            override_reasons=[{"system": reasons_system, "code": str(r["code"]), "display": str(r["display"])}
                              for r in card.meta.get("override_reasons", []) or [] if isinstance(r, dict)],
            links=copy.deepcopy(links),
            full_summary=full_summary,
        )

    def _suggestions(self, card: CardContent, context: Mapping[str, Any],
                     findings: frozenset[str]) -> list[dict[str, Any]]:
        suggestions = []
        for suggestion in card.meta.get("suggestions", []) or []:
            if findings & {str(f) for f in suggestion.get("unless", []) or []}:
                continue  # e.g. no "remove the IVIG order" in pregnancy, no PFT order after recent PFTs
            rendered_s = self._render_structure(
                {k: v for k, v in suggestion.items() if k not in ("actions", "unless")}, context)
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
        return suggestions

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
