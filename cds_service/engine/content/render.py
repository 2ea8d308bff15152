"""Render a decision into a card: the one render function, used by serving and by content checks."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
from cds_service.engine.content.compiled import render_values
from cds_service.engine.content.text import escaped, md_escape
from cds_service.ids import new_uuid
from cds_service.protocol.card import CARD_SYSTEM, Card, CardIdentity

# An action.resourceId as response.json requires it: a relative reference Type/id.
_RESOURCE_ID = re.compile(r"^[A-Z][A-Za-z]+/[^/\s]+$")
#: A group of adjacent citation markers, "[a] [b]", rendered as one "[1, 2]".
_KEY = r"\[[a-z0-9][a-z0-9-]*[a-z0-9]\](?!\()"
_CITATION_GROUP = re.compile(rf"[ \t]*{_KEY}(?:[ \t]*{_KEY})*")
#: The same groups, searched for from their first "[" (ten times faster than _CITATION_GROUP, which
#: tries every space): the spaces and tabs before the "[" are then added, as _CITATION_GROUP takes them.
_CITATION_RUN = re.compile(rf"{_KEY}(?:[ \t]*{_KEY})*")
_CITATION_KEY = re.compile(r"\[([a-z0-9][a-z0-9-]*[a-z0-9])\]")
_BLANK_LINES = re.compile(r"\n{3,}")
#: What a clinician reads of ``detail`` at most, in Markdown characters, for any patient.
DETAIL_MAX = 900
#: How the detail is made to fit DETAIL_MAX, step by step: (data notes compact: 0 as written, 1 one line
#: naming what is missing, 2 only how many; facts: with resource references?, how many listed at most).
_FIT_LEVELS: tuple[tuple[int, bool, int | None], ...] = (
    (0, True, None), (1, True, None), (1, False, None), (1, False, 3), (2, False, 1))
#: Bounds of the renderer's caches (each is emptied when full): rendered fact lines, rendered citation
#: groups per card, links per card and base URL.
FACT_LINES_MAX = 4096
CITATIONS_MAX = 1024
LINKS_MAX = 256
_PLAIN = frozenset({str, type(None)})
#: Values of card front matter that are shared, never copied, between the cards rendered from it.
_IMMUTABLE = (int, float, bool, type(None), bytes)


class RenderError(Exception):
    """A card's template failed for this context (content error: ``cards check`` reports it)."""

    def __init__(self, card_id: str, cause: BaseException) -> None:
        super().__init__(f"{card_id}: {type(cause).__name__}: {cause}")
        self.card_id = card_id
        self.cause = cause


@dataclass(frozen=True)
class _CardParts:
    """What a card shows that depends neither on the patient nor on the base URL: built on the card's
    first render, kept while the catalogue holds the same card."""

    content: CardContent
    identity: CardIdentity
    title: str
    label: str
    indicator: str
    #: (finding, indicator, its severity) in the card's order.
    indicator_rules: tuple[tuple[Any, str, int], ...]
    #: (system, code, display) of each override reason.
    override_reasons: tuple[tuple[str, str, str], ...]
    selection_behavior: str


class Renderer:
    """Renders the cards of one loaded catalogue; what does not depend on the patient is rendered once.
    The catalogue is read as it is at a card's first render (content is loaded, never edited, in place)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.shared = catalog.shared
        self.references = catalog.references
        self.hashes = catalog.hashes
        self._shared_templates = catalog.shared_templates
        self._structure_templates: dict[str, Any] = {}
        self._static: dict[tuple[str, ...], Any] = {}
        # Caches (plain dict get/set: safe across threads; emptied when full).
        self._fact_lines: dict[tuple[Any, ...], str] = {}
        self._citations: dict[tuple[str, str], dict[str, str]] = {}
        self._links: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._parts: dict[str, _CardParts] = {}

    def status_display(self, key: str | None) -> str:
        return self.catalog.status_display(key)

    def short_label(self, key: str) -> str:
        return self.catalog.short_label(key)

    def approval_current(self, card: CardContent) -> bool:
        return self.catalog.approval_current(card)

    def render_fact(self, fact: Fact, compact: bool = False) -> str:
        """The fact's line; the same fact (every field a string or None) is rendered once."""
        key = (fact.label, fact.value_key, fact.value_text, fact.date, fact.reference, bool(compact))
        cacheable = {type(fact.label), type(fact.value_key), type(fact.value_text), type(fact.date),
                     type(fact.reference)} <= _PLAIN
        if cacheable:
            line = self._fact_lines.get(key)
            if line is not None:
                return line
        line = self._render_fact(fact, compact)
        if cacheable:
            if len(self._fact_lines) >= FACT_LINES_MAX:
                self._fact_lines.clear()
            self._fact_lines[key] = line
        return line

    def _render_fact(self, fact: Fact, compact: bool) -> str:
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
        return render_values(template, values).strip()

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
        done = self._citations.get((card_id, expert))  # each group of markers is numbered once
        if done is None:
            if len(self._citations) >= LINKS_MAX:
                self._citations.clear()
            done = self._citations[(card_id, expert)] = {}

        pieces: list[str] = []
        end = 0
        for match in _CITATION_RUN.finditer(text):  # what _CITATION_GROUP.sub would replace
            start = match.start()
            while start > end and text[start - 1] in " \t":
                start -= 1
            group = text[start:match.end()]
            out = done.get(group)
            if out is None:
                keys = _CITATION_KEY.findall(group)
                shown = [str(numbers[k]) for k in dict.fromkeys(keys) if k in numbers]
                out = f" [{', '.join(shown)}]" if shown else ""
                if EXPERT_OPINION in keys and expert:
                    out += f" {expert}"
                if len(done) >= CITATIONS_MAX:
                    done.clear()
                done[group] = out
            pieces += (text[end:start], out)
            end = match.end()
        if not pieces:
            return text
        pieces.append(text[end:])
        return "".join(pieces)

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
                return render_values(template, context).strip()
            return value
        if isinstance(value, list):
            return [self._render_structure(v, context) for v in value]
        if isinstance(value, dict):
            return {k: self._render_structure(v, context) for k, v in value.items()}
        if isinstance(value, date):
            return value.isoformat()
        return value if isinstance(value, _IMMUTABLE) else copy.deepcopy(value)

    def _expand_actions(self, actions: list[Any], context: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Render actions; ``for_each: <list variable>`` repeats an action once per item, with the
        item bound to ``item`` (e.g. one delete per IVIG draft order).  Every list and dict rendered is
        new: the card's front matter is never shared with a card served."""
        rendered: list[dict[str, Any]] = []
        for action in actions:
            if not isinstance(action, dict):
                continue
            body = {k: v for k, v in action.items() if k != "for_each"}
            loop = action.get("for_each")
            if loop:
                items = context.get(str(loop)) or []
                for value in items if isinstance(items, list) else []:
                    rendered.append(self._render_structure(body, {**context, LOOP_ITEM: value}))
            else:
                rendered.append(self._render_structure(body, context))
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
        findings = frozenset(decision.findings)
        expert = str(self.shared.get("expert_opinion_detail", ""))
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
                facts_used=escaped("\n".join(lines)), findings=findings,
                data_notes=self.render_notes(card.id, notes, fired, compact=notes_level), patient_id=patient_id))
            detail = self.number_citations(card.id, render_values(card.body_template, context).strip(), expert)
            if "\n\n\n" in detail:
                detail = _BLANK_LINES.sub("\n\n", detail)
            if first is None:
                first = (detail, context)
            if len(detail) <= DETAIL_MAX:
                break
        else:
            assert first is not None
            detail, context = first
        full_summary = " ".join(render_values(card.summary_template, context).split())
        summary = full_summary
        if len(summary) > SUMMARY_MAX:
            summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
        links = self._links.get((card.id, base_url))
        if links is None:
            links = self.links(card, base_url)
            if len(self._links) >= LINKS_MAX:
                self._links.clear()
            self._links[(card.id, base_url)] = links
        suggestions = self._suggestions(card, context, findings)
        parts = self._card_parts(card)
        indicator = parts.indicator  # as ``indicator()``, from the rules read once
        for finding, override, severity in parts.indicator_rules:
            if finding in findings and severity > SEVERITY.get(indicator, 0):
                indicator = override
        return Card(
            uuid=new_uuid(),
            summary=summary,
            detail=detail,
            indicator=indicator,
            source={"label": parts.label, "url": self.source_url(card.id, base_url),
                    "topic": {"system": CARD_SYSTEM, "code": card.id, "display": parts.title}},
            identity=parts.identity,
            suggestions=suggestions,
            selection_behavior=parts.selection_behavior if suggestions else None,
            override_reasons=[{"system": system, "code": code, "display": display}
                              for system, code, display in parts.override_reasons],
            links=[dict(link) for link in links],  # label, url, type: strings
            full_summary=full_summary,
        )

    def _card_parts(self, card: CardContent) -> _CardParts:
        parts = self._parts.get(card.id)
        if parts is None or parts.content is not card:
            meta = card.meta
            system = str(self.shared.get("override_reason_system", ""))
            parts = self._parts[card.id] = _CardParts(
                content=card,
                identity=CardIdentity(card.id, card.version, self.hashes[card.id], card.status),
                title=str(meta.get("title", card.id)),
                label=self.source_label(card),
                indicator=str(meta.get("indicator", "info")),
                indicator_rules=tuple((finding, str(override), SEVERITY.get(str(override), -1))
                                      for finding, override in (meta.get("indicator_rules") or {}).items()),
                override_reasons=tuple((system, str(r["code"]), str(r["display"]))
                                       for r in meta.get("override_reasons", []) or [] if isinstance(r, dict)),
                selection_behavior=str(meta.get("selection_behavior", "at-most-one")),
            )
        return parts

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
    merged: dict[tuple[str | None, str | None, str | None], Fact] = {}  # in order of first appearance
    for fact in facts:
        key = (fact.reference, fact.value_key, fact.value_text) if fact.reference else (None, fact.label, None)
        existing = merged.get(key)
        if existing is None:
            merged[key] = fact
        elif fact.label not in existing.label.split(" · "):
            merged[key] = Fact(f"{existing.label} · {fact.label}", existing.value_key, existing.value_text,
                               existing.date, existing.reference)
    return list(merged.values())
