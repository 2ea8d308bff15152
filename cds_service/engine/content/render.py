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
from cds_service.engine.content.catalog import (
    EXPERT_OPINION,
    SEVERITY,
    SUMMARY_MAX,
    CardContent,
    Catalog,
    bibliographic,
)
from cds_service.engine.content.text import escaped, md_escape
from cds_service.ids import new_uuid
from cds_service.protocol.card import CARD_SYSTEM, Card, CardIdentity

# An action.resourceId as response.json requires it: a relative reference Type/id.
_RESOURCE_ID = re.compile(r"^[A-Z][A-Za-z]+/[^/\s]+$")
#: A group of adjacent citation markers, "[a] [b]", rendered as one "[1, 2]".
_KEY = r"\[[a-z0-9][a-z0-9-]*[a-z0-9]\](?!\()"
_CITATION_GROUP = re.compile(rf"[ \t]*{_KEY}(?:[ \t]*{_KEY})*")
#: What a clinician reads of ``detail`` at most, in Markdown characters, for any patient.
DETAIL_MAX = 900
#: How the detail is made to fit DETAIL_MAX, step by step: (data notes compact: 0 as written, 1 one line
#: naming what is missing, 2 only how many; facts: with resource references?, how many listed at most).
_FIT_LEVELS: tuple[tuple[int, bool, int | None], ...] = (
    (0, True, None), (1, True, None), (1, False, None), (1, False, 3), (2, False, 1))


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
        self._static: dict[tuple[str, ...], Any] = {}

    def status_display(self, key: str | None) -> str:
        return self.catalog.status_display(key)

    def short_label(self, key: str) -> str:
        return self.catalog.short_label(key)

    def approval_current(self, card: CardContent) -> bool:
        return self.catalog.approval_current(card)

    def render_fact(self, fact: Fact, compact: bool = False) -> str:
        template = self._shared_templates.get("compact_fact_line" if compact else "fact_line") \
            or self._shared_templates.get("fact_line")
        shown = self.status_display(fact.value_key)
        if fact.value_text and shown and fact.value_text.strip().lower() != shown.strip().lower() \
                and fact.value_text.strip().lower() != str(fact.value_key).lower():
            shown = f"{shown} ({fact.value_text})"
        values = {"label": fact.label, "value": shown or fact.value_text or "", "raw": fact.value_text or "",
                  "date": fact.date or "", "reference": fact.reference or ""}
        if template is None:
            return f"- {md_escape(fact.label)}"
        return template.render(**values).strip()

    def render_notes(self, card_id: str, notes: list[DataNote], fired: frozenset[str] = frozenset(),
                     compact: int = 0) -> Markup:
        """What could not be read or checked.  A key's note goes to the cards it affects; when none
        of those fired, to every card that did, so that no unavailable key goes unmentioned.
        ``compact``: 1 one line naming what could not be checked and how many records were skipped;
        2 the same line with only how many."""
        lines: list[str] = []
        short: list[str] = []
        skipped_count = 0
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
                short.append(str(entry.get("short") or entry.get("text", "")))
                template = self._shared_templates.get("data_note_line")
                text = str(entry.get("text", ""))
                line = template.render(text=escaped(md_escape(text))) if template else f"- {md_escape(text)}"
            else:
                skipped_count += 1
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
        compact_line = self._shared_templates.get("compact_notes_line")
        if compact and compact_line is not None:
            items = list(dict.fromkeys(short))
            return escaped(compact_line.render(items=items if compact == 1 else [], unchecked=len(items),
                                               skipped=skipped_count).strip())
        heading = self._shared_templates.get("data_notes_heading")
        head = heading.render().strip() if heading else ""
        return escaped("\n".join([head, ""] + lines if head else lines))

    def number_citations(self, card_id: str, text: str, expert: str = "") -> str:
        """``[key]`` → ``[n]`` (the reference's number on the rationale page); adjacent markers merge
        into ``[1, 2]``; ``[expert-opinion]`` → ``expert``; ``[record]``, an origin seed or an unknown
        key show nothing (a seed is never shown to a clinician as evidence)."""
        numbers = self._numbers(card_id)

        def replace(match: re.Match[str]) -> str:
            keys = re.findall(r"\[([a-z0-9][a-z0-9-]*[a-z0-9])\]", match.group(0))
            shown = [str(numbers[k]) for k in dict.fromkeys(keys) if k in numbers]
            out = f" [{', '.join(shown)}]" if shown else ""
            if EXPERT_OPINION in keys and expert:
                out += f" {expert}"
            return out

        return _CITATION_GROUP.sub(replace, text)

    def _numbers(self, card_id: str) -> dict[str, int]:
        numbers = self._static.get(("numbers", card_id))
        if numbers is None:
            numbers = self._static[("numbers", card_id)] = {
                key: index for index, key in enumerate(self.catalog.citation_order(card_id), start=1)}
        return numbers

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
        """The card's public rationale page (``GET /cards/<card-id>``) on the service's base URL."""
        return f"{base_url.rstrip('/')}/cards/{card_id}"

    def source_label(self, card: CardContent) -> str:
        """``source.label``: the review state the clinician needs (never a date the card was not reviewed on)."""
        label = self._static.get(("label", card.id))
        if label is None:
            brand = str(self.shared.get("source_label", "")).strip()
            state = self.catalog.review_state(card)
            label = self._static[("label", card.id)] = f"{brand} · {state}" if brand and state else (state or brand)
        return str(label)

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
        assert card.summary_template is not None and card.body_template is not None
        facts = merge_facts(decision.facts_used)
        # The detail must fit DETAIL_MAX for any patient: as written first; when it would not fit, the
        # data notes compacted, then the facts without resource references, then only the first facts.
        # A text that fits at no step is served as written (``cards check`` reports it).
        first: tuple[str, Any] | None = None
        for notes_level, references, most in _FIT_LEVELS:
            shown = facts if most is None else facts[:most]
            lines = [self.render_fact(f, compact=not references) for f in shown]
            if len(shown) < len(facts):
                more = self._shared_templates.get("more_facts_line")
                if more is not None:
                    lines.append(more.render(count=len(facts) - len(shown)).strip())
            context = template_context(variables, RenderVariables(
                facts_used=escaped("\n".join(lines)), findings=frozenset(decision.findings),
                data_notes=self.render_notes(card.id, notes, fired, compact=notes_level), patient_id=patient_id))
            detail = self.number_citations(card.id, card.body_template.render(**context).strip(),
                                           str(self.shared.get("expert_opinion_detail", "")))
            detail = re.sub(r"\n{3,}", "\n\n", detail)
            if first is None:
                first = (detail, context)
            if len(detail) <= DETAIL_MAX:
                break
        else:
            assert first is not None
            detail, context = first
        full_summary = " ".join(card.summary_template.render(**context).split())
        summary = full_summary
        if len(summary) > SUMMARY_MAX:
            summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
        links = self._static.get(("links", card.id, base_url))
        if links is None:
            links = self._static[("links", card.id, base_url)] = self.links(card, base_url)
        reasons_system = str(self.shared.get("override_reason_system", ""))
        suggestions = self._suggestions(card, context, frozenset(decision.findings))
        return Card(
            uuid=new_uuid(),
            summary=summary,
            detail=detail,
            indicator=self.indicator(card, decision.findings),
            source={"label": self.source_label(card), "url": self.source_url(card.id, base_url),
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

    def links(self, card: CardContent, base_url: str) -> list[dict[str, Any]]:
        """The rationale page first (evidence, full guidance, disclaimer), then the card's own links."""
        links: list[dict[str, Any]] = [{"label": str(self.shared.get("rationale_link_label", "")) or card.id,
                                        "url": self.source_url(card.id, base_url), "type": "absolute"}]
        seen = {links[0]["url"]}
        for link in card.meta.get("links", []) or []:
            if isinstance(link, dict) and str(link.get("url", "")).startswith("https://") \
                    and link["url"] not in seen:
                seen.add(link["url"])
                links.append({"label": str(link.get("label")), "url": link["url"], "type": "absolute"})
        return links

    # -- the rationale page ---------------------------------------------------------------
    def rationale(self, card_id: str) -> dict[str, Any]:
        """Everything the public page ``GET /cards/<card-id>`` shows of the served content version:
        no patient data.  Rendered once per loaded catalogue."""
        page = self._static.get(("rationale", card_id))
        if page is not None:
            return page
        card = self.catalog.cards[card_id]
        meta = card.meta
        references = []
        for number, key in enumerate(self.catalog.citation_order(card_id), start=1):
            ref = self.references[key]
            references.append({"number": number, "key": key, "text": bibliographic(ref),
                               "url": ref.get("url"), "doi": ref.get("doi"), "pmid": ref.get("pmid"),
                               "kind": ref.get("kind")})
        body = self.number_citations(card_id, card.rationale, str(self.shared.get("expert_opinion_page", "")))
        page = {
            "id": card_id,
            "title": str(meta.get("title", card_id)),
            "version": card.version,
            "content_hash": self.hashes[card_id],
            "review_state": self.catalog.review_state(card),
            "rationale": body,
            "references": references,
            "disclaimer": str(self.shared.get("disclaimer", "")),
            "attributes": {"developer": str(meta.get("developer", "")),
                           "funding_source": str(meta.get("funding_source", "")),
                           "owner": str(meta.get("owner", "")),
                           "release_date": str(meta.get("release_date", "")),
                           "revision_date": str(meta.get("revision_date", ""))},
        }
        self._static[("rationale", card_id)] = page
        return page


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
