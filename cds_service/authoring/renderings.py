"""``cards check``, part two: render every card the way the service would and check what comes out.

Two sources of renderings: synthetic contexts (all findings / none / each one the text tests, with the
longest plausible values or every optional value empty), and every fixture patient through the real
pipeline on both hooks.  A rendering is checked for its summary length, an empty summary, suggestion
resources that are not valid FHIR R4, and Markdown list items glued to the line before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from jinja2 import TemplateSyntaxError, UndefinedError, nodes

from cds_service.authoring.calls import FixtureError, call_fixture, expected_cards, read_fixture
from cds_service.authoring.problems import ERROR, WARNING, Problem, collapse, short_error
from cds_service.clinical.contract import (
    FINDINGS,
    FINDINGS_NAME,
    Antibody,
    AntibodyView,
    CardId,
    LabView,
    TemplateVariables,
)
from cds_service.clinical.model import DataNote, Decision, Fact
from cds_service.devtools.fixtures import list_fixtures
from cds_service.engine.content import (
    DETAIL_MAX,
    SUMMARY_MAX,
    CardContent,
    Catalog,
    Renderer,
    RenderError,
    make_environment,
)
from cds_service.engine.runtime import Runtime
from cds_service.protocol import HOOKS
from cds_service.terminology import Terminology

# "…[ref]- Next item": a list marker glued to the previous line (a block tag ate the newline).
_GLUED_LIST_ITEM = re.compile(r"[^\s\-]- (?=[A-Z*\[])")
#: A Markdown inline link or a bare URL: never in a card's detail (a click would navigate the EHR away).
INLINE_LINK = re.compile(r"\]\(|<https?://|https?://")
_LONG_ID = "x" * 64  # FHIR ids are at most 64 characters
_DAY = "2026-11-22"
CARD_IDS = frozenset(CardId)


def finding_literals(ast: nodes.Template) -> set[str]:
    """Finding keys a template tests: ``'x' in findings`` / ``'x' not in findings``."""
    found: set[str] = set()
    for compare in ast.find_all(nodes.Compare):
        for operand in compare.ops:
            if operand.op in ("in", "notin") and isinstance(operand.expr, nodes.Name) \
                    and operand.expr.name == FINDINGS_NAME and isinstance(compare.expr, nodes.Const) \
                    and isinstance(compare.expr.value, str):
                found.add(compare.expr.value)
    return found


def synthetic_variables(terminology: Terminology, maximal: bool) -> TemplateVariables:
    """Template variables with the longest plausible values (``maximal``) or every optional value empty."""

    def longest_display(vs_id: str, fallback: str, count: int = 1) -> list[str]:
        if vs_id not in terminology:
            return [fallback] * count
        vs = terminology[vs_id]
        names = sorted({c.display[:120] for c in vs.concepts if c.display} | {vs.title}, key=len,
                       reverse=True)
        return (names + [fallback] * count)[:count]

    antibodies = {}
    for antibody in Antibody:
        vs_id = antibody.value_set
        label = terminology[vs_id].title if vs_id in terminology else antibody.value
        antibodies[antibody.value] = AntibodyView(label=label, status="strong-positive" if maximal else "unknown",
                                                  date=_DAY if maximal else None,
                                                  reference=f"Observation/{_LONG_ID}" if maximal else None)
    if not maximal:
        return TemplateVariables(antibodies=antibodies)

    def lab(flag: str) -> LabView:
        return LabView(value=1234.56, unit="mL/min/{1.73_m2}", text="1234.56 mL/min/{1.73_m2}", date=_DAY,
                       flag=flag, reference=f"Observation/{_LONG_ID}")

    return TemplateVariables(
        weight_kg=188.88, weight_date=_DAY,
        order_display=longest_display("medication-ivig", "immune globulin intravenous")[0],
        order_reference=f"MedicationRequest/{_LONG_ID}",
        order_references=[f"MedicationRequest/{_LONG_ID}"],
        antibodies=antibodies, egfr=lab("low"), creatinine=lab("high"), iga=lab("low"),
        therapy=longest_display("medication-first-line", "first-line agent", 3),
    )


def _synthetic_facts(terminology: Terminology) -> list[Fact]:
    titles = sorted((vs.title for vs in terminology.value_sets.values()), key=len, reverse=True)[:8]
    titles = titles or ["Fact"]
    facts = [Fact(label=titles[0], value_key="strong-positive", date=_DAY, reference=f"Observation/{_LONG_ID}")]
    facts += [Fact(label=title, value_text="1234.56 mL/min/{1.73_m2} (low)", date=_DAY,
                   reference="Condition/" + "y" * 64) for title in titles[1:]]
    return facts


def _synthetic_notes(catalog: Catalog) -> list[DataNote]:
    notes = [DataNote("failed-key", str(key)) for key in (catalog.shared.get("unavailable_data") or {})]
    notes += [DataNote("skipped-resource", str(key), "Observation/bad-1")
              for key in (catalog.shared.get("skipped_reasons") or {})]
    return notes


def _content_findings(card: CardContent) -> set[str]:
    """Finding keys the card's own text tests (so every branch is rendered at least once)."""
    found: set[str] = set()
    for source in (str(card.meta.get("summary", "")), card.body):
        try:
            found |= finding_literals(make_environment().parse(source))
        except TemplateSyntaxError:
            continue  # reported by the static check
    return found


def check_synthetic_renderings(catalog: Catalog) -> list[Problem]:
    """Render every card with synthetic contexts: all findings / none / each one, maximal / empty values."""
    problems: list[Problem] = []
    maximal = synthetic_variables(catalog.terminology, True)
    empty = synthetic_variables(catalog.terminology, False)
    facts = _synthetic_facts(catalog.terminology)
    notes = _synthetic_notes(catalog)
    renderer = Renderer(catalog)
    for card_id, card in catalog.cards.items():
        tested = _content_findings(card)
        variants: list[tuple[str, TemplateVariables, set[str], list[Fact], list[DataNote]]] = [
            ("all findings, longest values", maximal, set(FINDINGS | tested), facts, notes),
            ("no findings, no optional values", empty, set(), [], []),
            ("no findings, longest values", maximal, set(), facts, notes),
        ]
        variants += [(f"finding {f!r} only, longest values", maximal, {f}, facts, notes)
                     for f in sorted(tested)]
        for label, variables, findings, used, data_notes in variants:
            # A card file the rules never choose is still rendered: its id goes in as written.
            decision = Decision(CardId(card_id) if card_id in CARD_IDS else card_id,  # type: ignore[arg-type]
                                list(used), set(findings))  # type: ignore[arg-type]
            problems += _check_one_rendering(renderer, card, decision, variables, data_notes,
                                             f"synthetic context ({label})")
    return collapse(problems)


def _check_one_rendering(renderer: Renderer, card: CardContent, decision: Decision,
                         variables: TemplateVariables, notes: list[DataNote], where: str) -> list[Problem]:
    try:
        rendered = renderer.render(decision, variables, notes, "https://cds.example.org", "all",
                                   patient_id=_LONG_ID)
    except RenderError as exc:
        if isinstance(exc.cause, UndefinedError):
            return [Problem(card.path.name, "placeholder", f"{where}: {exc.cause.message}", ERROR, card.id)]
        return [Problem(card.path.name, "template", f"{where}: rendering fails: {type(exc.cause).__name__}: "
                        f"{short_error(exc.cause)}", ERROR, card.id)]
    return check_rendered(card, rendered.to_json(), rendered.full_summary, where)


def check_rendered(card: CardContent, rendered: Mapping[str, Any], summary: str | None,
                   where: str) -> list[Problem]:
    """Problems of one rendered card (its JSON and its summary before truncation)."""
    problems: list[Problem] = []
    if summary is not None and len(summary) > SUMMARY_MAX:
        problems.append(Problem(card.path.name, "summary-length",
                                f"{where}: the summary renders to {len(summary)} characters "
                                f"(at most {SUMMARY_MAX}): {summary!r}", ERROR, card.id))
    if not str(rendered.get("summary", "")).strip():
        problems.append(Problem(card.path.name, "template", f"{where}: the summary renders empty", ERROR,
                                card.id))
    for suggestion in rendered.get("suggestions", []) or []:
        for action in suggestion.get("actions", []) or []:
            resource = action.get("resource")
            if isinstance(resource, dict):
                message = _fhir_problem(resource)
                if message:
                    problems.append(Problem(card.path.name, "suggestion",
                                            f"{where}: suggestion {suggestion.get('label')!r}: the "
                                            f"{action.get('type')} resource is not valid FHIR R4: {message}",
                                            ERROR, card.id))
    detail = str(rendered.get("detail", ""))
    if len(detail) > DETAIL_MAX:
        problems.append(Problem(card.path.name, "detail-length", f"{where}: the detail renders to {len(detail)} "
                                f"characters (at most {DETAIL_MAX})", ERROR, card.id))
    if INLINE_LINK.search(detail):
        problems.append(Problem(card.path.name, "inline-link", f"{where}: the detail contains an inline link",
                                ERROR, card.id))
    for line in detail.splitlines():
        if _GLUED_LIST_ITEM.search(line) and not line.lstrip().startswith("`"):
            problems.append(Problem(card.path.name, "markdown",
                                    f"{where}: a list item is glued to the previous line (a `{{%-` or "
                                    f"`{{%- endif %}}` ate a line break): {line.strip()[:120]!r}", WARNING,
                                    card.id))
            break
    return problems


def _fhir_problem(resource: Mapping[str, Any]) -> str | None:
    try:
        model = get_fhir_model_class(str(resource.get("resourceType")))
    except ValueError:  # fhir.resources: "<name> is not a valid FHIR Model"
        return f"unknown resourceType {resource.get('resourceType')!r}"
    try:
        model.model_validate(dict(resource))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return short_error(exc)
    return None


def check_pipeline(catalog: Catalog, runtime: Runtime, fixtures_dir: Path) -> list[Problem]:
    """Every fixture through the real pipeline (CONTENT_POLICY=all), both hooks; check what it renders."""
    problems: list[Problem] = []
    rendered: list[Problem] = []
    names = list_fixtures(fixtures_dir)
    if not names:
        return [Problem(fixtures_dir.name, "fixture", f"no fixtures in {fixtures_dir}", WARNING)]
    for name in names:
        where_fx = f"{fixtures_dir.name}/{name}.json"
        try:
            fixture = read_fixture(name, fixtures_dir)
        except FixtureError as exc:
            problems.append(Problem(where_fx, "fixture", f"cannot be read: {short_error(exc)}"))
            continue
        for hook in HOOKS:
            for card_id in expected_cards(fixture, hook):
                if card_id not in catalog.cards:
                    problems.append(Problem(where_fx, "missing-card",
                                            f"{hook} expects card {card_id!r}, but there is no "
                                            f"{card_id}.md", ERROR, card_id))
            try:
                result = call_fixture(runtime, fixture, hook)
            except RenderError as exc:
                card = catalog.cards[exc.card_id]
                problems.append(Problem(card.path.name, "template",
                                        f"fixture {name} ({hook}): rendering fails: "
                                        f"{type(exc.cause).__name__}: {short_error(exc.cause)}", ERROR, card.id))
                continue
            except Exception as exc:  # boundary: whatever the whole service raises on this
                # fixture is a finding of the check (a malformed fixture, an engine fault), not a crash of it.
                problems.append(Problem(where_fx, "pipeline", f"{hook}: the call fails: "
                                        f"{type(exc).__name__}: {short_error(exc)}"))
                continue
            for withheld in result.withheld:
                if withheld.reason == "no-content":
                    problems.append(Problem(where_fx, "missing-card",
                                            f"{hook}: the rules chose card {withheld.card_id!r}, "
                                            "which has no content file", ERROR, withheld.card_id))
            for item in result.cards:
                if item.card_id in catalog.cards:
                    rendered += check_rendered(catalog.cards[item.card_id], item.to_json(), item.full_summary,
                                               f"fixture {name} ({hook})")
    return problems + collapse(rendered)
