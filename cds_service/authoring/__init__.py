"""Content governance: ``cards check``, ``cards approve``, ``cards export``, ``report``, ``fixtures build``
and the review packet behind ``/review``.

Compliance reviewers must be able to read every word a clinician can see, know which version is live
and who approved it, and prove afterwards what was shown.  This module checks the content under
``cards/`` (schema, placeholders, citations, value sets, summary length, override reasons, suggestion
resources, approvals, review dates), records approvals bound to the content hash, and assembles the
review packet.  No clinical sentence lives here: the packet only carries text read from ``cards/``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import re
import shutil
import sys
import tempfile
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, TemplateSyntaxError, UndefinedError, meta, nodes, select_autoescape
from markupsafe import Markup

from cds_service.clinical.contract import (
    FINDINGS,
    FINDINGS_NAME,
    TEMPLATE_NAMES,
    Antibody,
    AntibodyView,
    CardId,
    LabView,
    TemplateVariables,
)
from cds_service.clinical.dates import parse_date
from cds_service.clinical.model import DataNote, Decision, Fact
from cds_service.engine import pipeline
from cds_service.engine.content import (
    CITATION,
    INDICATORS,
    SEVERITY,
    STATUSES,
    SUMMARY_MAX,
    CardContent,
    Catalog,
    ContentError,
    Renderer,
    RenderError,
    make_environment,
    normalise_body,
    split_front_matter,
)
from cds_service.terminology import EXT_ALIAS, EXT_ALIAS_EXCLUDE, Terminology, compile_value_set

# --------------------------------------------------------------------------------------------------
# Vocabulary of the checks
# --------------------------------------------------------------------------------------------------

ERROR, WARNING, INFO = "error", "warning", "info"

CARD_VARIABLES = TEMPLATE_NAMES
KNOWN_FINDINGS = FINDINGS
CARD_IDS = frozenset(CardId)

REQUIRED_TEXT = ("id", "version", "status", "title", "indicator", "trigger", "summary", "owner",
                 "developer", "funding_source")
REQUIRED_DATES = ("last_reviewed", "next_review_due", "release_date", "revision_date")
REQUIRED_LISTS = ("citations", "valuesets")
OPTIONAL_KEYS = frozenset({"indicator_rules", "override_reasons", "suggestions", "links", "approval",
                           "selection_behavior"})
KNOWN_KEYS = frozenset(REQUIRED_TEXT) | frozenset(REQUIRED_DATES) | frozenset(REQUIRED_LISTS) | OPTIONAL_KEYS
REFERENCE_KEYS = frozenset({"authors", "title", "journal", "year", "volume", "pages", "doi", "pmid", "url",
                            "note", "short"})
ACTION_TYPES = ("create", "update", "delete")
SELECTION_BEHAVIORS = ("at-most-one", "any")

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CODE_TOKEN = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# "…[ref]- Next item": a list marker glued to the previous line (a block tag ate the newline).
_GLUED_LIST_ITEM = re.compile(r"[^\s\-]- (?=[A-Z*\[])")
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*:")

WITHHELD_WORDS = {
    "approval-hash-mismatch": "the approval does not match the current text",
    "review-overdue": "the review is overdue (next_review_due has passed)",
    "retired": "the card is retired",
    "no-content": "there is no card file",
}
HOOKS = ("order-select", "order-sign")
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "http" / "web" / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "http" / "web" / "static"


@dataclass(frozen=True)
class Problem:
    """One finding of ``cards check``: where, what kind, what, how bad."""

    file: str
    kind: str
    message: str
    severity: str = ERROR
    card_id: str | None = None

    def __str__(self) -> str:
        return f"{self.file}: [{self.kind}] {self.message}"


class GovernanceError(Exception):
    """An approval or export that cannot be done; the message says why."""


# --------------------------------------------------------------------------------------------------
# cards check
# --------------------------------------------------------------------------------------------------

@dataclass
class _CardFile:
    path: Path
    card_id: str
    meta: dict[str, Any]
    body: str
    loadable: bool


def check(cards_dir: str | Path, fixtures_dir: str | Path, today: date | None = None) -> list[Problem]:
    """Every content problem under ``cards_dir`` (errors, warnings, and low-confidence codes as info)."""
    cards_dir, fixtures_dir = Path(cards_dir), Path(fixtures_dir)
    today = today or datetime.now(UTC).date()
    problems: list[Problem] = []
    shared_ok = _check_shared_files(cards_dir, problems)
    bad_valuesets = _check_valuesets(cards_dir, problems)
    terminology = _load_terminology(cards_dir, bad_valuesets)
    references = _safe_yaml(cards_dir / "references.yaml")
    card_files = _read_card_files(cards_dir, problems)
    for card_file in card_files:
        if card_file.meta:
            problems += _check_card_static(card_file, terminology, references)
    if not shared_ok:
        return _sorted(problems)
    broken = {c.path.name for c in card_files if not c.loadable}
    with _loadable_copy(cards_dir, broken, bad_valuesets) as directory:
        try:
            # The service as it would start on this content; its catalog is the one checked.
            runtime = _pipeline_runtime(directory, fixtures_dir)
        except Exception as exc:  # ContentError and anything a half-written file can raise
            problems.append(Problem(cards_dir.name, "load", f"the content could not be loaded: {exc}"))
            return _sorted(problems)
        try:
            catalog = runtime.catalog
            problems += _check_catalog(catalog, today)
            problems += _check_synthetic_renderings(catalog)
            problems += _check_pipeline(catalog, runtime, fixtures_dir)
        finally:
            runtime.store.close()
    problems += _low_confidence(terminology)
    return _sorted(problems)


def _sorted(problems: list[Problem]) -> list[Problem]:
    order = {ERROR: 0, WARNING: 1, INFO: 2}
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (order.get(p.severity, 3), p.file, p.kind))


def _safe_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _check_shared_files(cards_dir: Path, problems: list[Problem]) -> bool:
    import yaml

    ok = True
    for name in ("_shared.yaml", "references.yaml"):
        path = cards_dir / name
        if not path.is_file():
            problems.append(Problem(name, "shared", f"{name} is missing"))
            ok = False
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception as exc:
            problems.append(Problem(name, "shared", f"not valid YAML: {exc}"))
            ok = False
            continue
        if not isinstance(data, dict):
            problems.append(Problem(name, "shared", "must be a mapping"))
            ok = False
            continue
        if name == "references.yaml":
            problems += _check_references(data)
        else:
            problems += _check_shared(data)
    return ok


def _check_shared(shared: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for key in ("source_label", "override_reason_system", "pending_line"):
        if not isinstance(shared.get(key), str) or not shared[key].strip():
            problems.append(Problem("_shared.yaml", "shared", f"`{key}` must be a non-empty string"))
    system = shared.get("override_reason_system")
    if isinstance(system, str) and not system.startswith(("http://", "https://", "urn:")):
        problems.append(Problem("_shared.yaml", "shared", "`override_reason_system` must be a URI"))
    notes = shared.get("unavailable_data", {}) or {}
    if not isinstance(notes, dict):
        problems.append(Problem("_shared.yaml", "shared", "`unavailable_data` must be a mapping"))
    else:
        for key, entry in notes.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("text"), str) \
                    or not isinstance(entry.get("affects", []) or [], list):
                problems.append(Problem("_shared.yaml", "shared", f"unavailable_data.{key} needs `text` (string) "
                                        "and `affects` (list of card ids)"))
    env = make_environment()
    for key, value in shared.items():
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            try:
                env.parse(value)
            except TemplateSyntaxError as exc:
                problems.append(Problem("_shared.yaml", "template", f"`{key}`: {exc.message}"))
    return problems


def bibliographic(ref: Mapping[str, Any]) -> str:
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
    if ref.get("url") and not ref.get("doi"):
        parts.append(str(ref["url"]))
    text = ""
    for part in parts:
        if text:
            text += " " if text.endswith((".", "?", "!")) else ". "
        text += part
    ends_with_url = bool(ref.get("url")) and text.endswith(str(ref.get("url")))
    return text + ("" if not text or ends_with_url or text.endswith((".", "?", "!")) else ".")


def _check_references(references: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for key, ref in references.items():
        where = "references.yaml"
        if not isinstance(ref, dict):
            problems.append(Problem(where, "reference", f"{key}: must be a mapping of bibliographic fields"))
            continue
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", str(key)):
            problems.append(Problem(where, "reference",
                                    f"{key}: keys are lower-case letters, digits and '-'"))
        if not isinstance(ref.get("title"), str) or not ref["title"].strip():
            problems.append(Problem(where, "reference", f"{key}: `title` is required"))
        unknown = sorted(set(ref) - REFERENCE_KEYS)
        if unknown:
            problems.append(Problem(where, "reference", f"{key}: unknown field(s) {', '.join(unknown)}",
                                    WARNING))
        url = ref.get("url")
        if url is not None and not (isinstance(url, str) and url.startswith("https://")):
            problems.append(Problem(where, "reference", f"{key}: `url` must be an absolute https URL"))
        if ref.get("year") is not None and not isinstance(ref.get("year"), int):
            problems.append(Problem(where, "reference", f"{key}: `year` must be a number"))
    return problems


def _check_valuesets(cards_dir: Path, problems: list[Problem]) -> set[str]:
    """Validate every value set file as a FHIR R4 ValueSet; the file names that cannot be loaded."""
    from fhir.resources.R4B.valueset import ValueSet as FhirValueSet

    bad: set[str] = set()
    directory = cards_dir / "valuesets"
    if not directory.is_dir():
        problems.append(Problem("valuesets/", "valueset", "the valuesets directory is missing"))
        return bad
    for path in sorted(directory.glob("*.json")):
        where = f"valuesets/{path.name}"
        try:
            resource = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(Problem(where, "valueset", f"not valid JSON: {exc}"))
            bad.add(path.name)
            continue
        if not isinstance(resource, dict) or resource.get("resourceType") != "ValueSet":
            problems.append(Problem(where, "valueset", "not a FHIR ValueSet resource"))
            bad.add(path.name)
            continue
        try:
            FhirValueSet.model_validate(resource)
        except Exception as exc:
            problems.append(Problem(where, "valueset", f"not a valid FHIR R4 ValueSet: {_short_error(exc)}"))
        if resource.get("id") != path.stem:
            problems.append(Problem(where, "valueset", f"id {resource.get('id')!r} must equal the file name"))
        try:
            compiled = compile_value_set(resource)
        except Exception as exc:
            problems.append(Problem(where, "valueset", f"cannot be compiled: {_short_error(exc)}"))
            bad.add(path.name)
            continue
        if not compiled.codes and not compiled.icd_prefixes and not compiled.aliases:
            problems.append(Problem(where, "valueset", "matches nothing: no codes, filters or text aliases",
                                    WARNING))
        for concept in compiled.concepts:
            if concept.confidence not in ("high", "medium", "low"):
                problems.append(Problem(where, "valueset", f"{concept.system}|{concept.code}: confidence "
                                        f"must be high, medium or low, not {concept.confidence!r}"))
    return bad


def _short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:399] + "…"


def _load_terminology(cards_dir: Path, bad: set[str]) -> Terminology:
    sets = []
    for path in sorted((cards_dir / "valuesets").glob("*.json")):
        if path.name in bad:
            continue
        try:
            sets.append(compile_value_set(json.loads(path.read_text(encoding="utf-8"))))
        except Exception:  # noqa: S112 - already reported by _check_valuesets
            continue
    return Terminology(sets)


def _card_paths(cards_dir: Path) -> list[Path]:
    return [p for p in sorted(cards_dir.glob("*.md"))
            if p.name.upper() != "README.MD" and not p.name.startswith("_")]


def _read_card_files(cards_dir: Path, problems: list[Problem]) -> list[_CardFile]:
    env = make_environment()
    files: list[_CardFile] = []
    for path in _card_paths(cards_dir):
        try:
            card_meta, body = split_front_matter(path.read_text(encoding="utf-8"), path.name)
        except ContentError as exc:
            problems.append(Problem(path.name, "front-matter", str(exc).removeprefix(f"{path.name}: "),
                                    card_id=path.stem))
            files.append(_CardFile(path, path.stem, {}, "", False))
            continue
        except Exception as exc:  # e.g. an impossible date such as 2026-13-40 in unquoted YAML
            problems.append(Problem(path.name, "front-matter", f"front matter cannot be read: {exc}",
                                    card_id=path.stem))
            files.append(_CardFile(path, path.stem, {}, "", False))
            continue
        loadable = True
        if str(card_meta.get("id", "")) != path.stem:
            problems.append(Problem(path.name, "front-matter",
                                    f"id {card_meta.get('id')!r} must equal the file name ({path.stem!r})",
                                    card_id=path.stem))
            loadable = False
        for label, source in (("summary", str(card_meta.get("summary", ""))), ("body", normalise_body(body))):
            try:
                env.from_string(source)
            except TemplateSyntaxError as exc:
                problems.append(Problem(path.name, "template", f"{label}: line {exc.lineno}: {exc.message}",
                                        card_id=path.stem))
                loadable = False
        files.append(_CardFile(path, path.stem, card_meta, body, loadable))
    return files


def _is_date(value: Any) -> bool:
    if isinstance(value, date) and not isinstance(value, datetime):
        return True
    if isinstance(value, str):
        try:
            date.fromisoformat(value)
            return True
        except ValueError:
            return False
    return False


def _template_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _template_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _template_strings(item)


def _finding_literals(ast: nodes.Template) -> set[str]:
    """Finding keys a template tests: ``'x' in findings`` / ``'x' not in findings``."""
    found: set[str] = set()
    for compare in ast.find_all(nodes.Compare):
        for operand in compare.ops:
            if operand.op in ("in", "notin") and isinstance(operand.expr, nodes.Name) \
                    and operand.expr.name == FINDINGS_NAME and isinstance(compare.expr, nodes.Const) \
                    and isinstance(compare.expr.value, str):
                found.add(compare.expr.value)
    return found


def _check_card_static(card: _CardFile, terminology: Terminology,
                       references: Mapping[str, Any]) -> list[Problem]:
    problems = _check_front_matter(card)
    name, card_id, fm = card.path.name, card.card_id, card.meta

    def add(kind: str, message: str, severity: str = ERROR) -> None:
        problems.append(Problem(name, kind, message, severity, card_id))

    # Placeholders: every name a template reads must be a CONTRACTS §4 variable.
    env = make_environment()
    sources: list[tuple[str, str]] = [("summary", str(fm.get("summary", ""))),
                                      ("body", normalise_body(card.body))]
    sources += [("suggestions", s) for s in _template_strings(fm.get("suggestions"))]
    for label, source in sources:
        try:
            ast = env.parse(source)
        except TemplateSyntaxError:
            continue  # reported by _read_card_files (or below for suggestion strings)
        unknown = sorted(meta.find_undeclared_variables(ast) - CARD_VARIABLES)
        if unknown:
            add("placeholder", f"{label}: unknown placeholder(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(CARD_VARIABLES))})")
        for finding in sorted(_finding_literals(ast) - KNOWN_FINDINGS):
            add("unknown-finding", f"{label}: tests finding {finding!r}, which no rule sets", WARNING)
    for source in _template_strings(fm.get("suggestions")):
        try:
            env.parse(source)
        except TemplateSyntaxError as exc:
            add("template", f"suggestions: {exc.message} in {source[:60]!r}")

    # Citations: front matter keys and every [key] in the body resolve in references.yaml.
    listed = [str(c) for c in fm.get("citations", []) or []] if isinstance(fm.get("citations"), list) else []
    for key in listed:
        if key not in references:
            add("citation", f"citation {key!r} is not in references.yaml")
    for key in dict.fromkeys(CITATION.findall(card.body)):
        if key not in references:
            add("citation", f"the text cites [{key}], which is not in references.yaml")
        elif key not in listed:
            add("citation", f"the text cites [{key}] but the front matter `citations` does not list it "
                "(its reference would not be part of the content hash)")

    # Value sets the rule uses exist.
    if isinstance(fm.get("valuesets"), list):
        for vs_id in fm["valuesets"]:
            if str(vs_id) not in terminology:
                add("valueset", f"value set {vs_id!r} does not exist in valuesets/")
    return problems


def _check_front_matter(card: _CardFile) -> list[Problem]:
    problems: list[Problem] = []
    fm = card.meta

    def add(message: str, severity: str = ERROR, kind: str = "front-matter") -> None:
        problems.append(Problem(card.path.name, kind, message, severity, card.card_id))

    for key in REQUIRED_TEXT:
        if key not in fm:
            add(f"`{key}` is required")
        elif not isinstance(fm[key], str) or not fm[key].strip():
            add(f"`{key}` must be a non-empty string, not {type(fm[key]).__name__} {fm[key]!r}"[:200])
    for key in REQUIRED_DATES:
        if key not in fm:
            add(f"`{key}` is required")
        elif not _is_date(fm[key]):
            add(f"`{key}` must be a date (YYYY-MM-DD), not {fm[key]!r}")
    for key in REQUIRED_LISTS:
        if key not in fm:
            add(f"`{key}` is required")
        elif not isinstance(fm[key], list) or not all(isinstance(v, str) for v in fm[key]):
            add(f"`{key}` must be a list of keys")
        elif not fm[key]:
            add(f"`{key}` is empty", WARNING)
    for key in sorted(set(fm) - KNOWN_KEYS):
        add(f"unknown front matter key `{key}` (a typo?)", WARNING)

    if isinstance(fm.get("status"), str) and fm["status"] not in STATUSES:
        add(f"`status` must be one of {', '.join(STATUSES)}, not {fm['status']!r}")
    if isinstance(fm.get("indicator"), str) and fm["indicator"] not in INDICATORS:
        add(f"`indicator` must be one of {', '.join(INDICATORS)}, not {fm['indicator']!r}")
    if isinstance(fm.get("version"), str) and not _SEMVER.match(fm["version"]):
        add(f"`version` must be a semantic version (MAJOR.MINOR.PATCH), not {fm['version']!r}")
    elif "version" in fm and not isinstance(fm["version"], str):
        add("`version` must be quoted or written MAJOR.MINOR.PATCH (YAML read it as a number)")
    if fm.get("selection_behavior") is not None and fm["selection_behavior"] not in SELECTION_BEHAVIORS:
        add(f"`selection_behavior` must be one of {', '.join(SELECTION_BEHAVIORS)}")
    released, revised = parse_date(fm.get("release_date")), parse_date(fm.get("revision_date"))
    if released and revised and revised < released:
        add("`revision_date` is before `release_date`", WARNING)
    reviewed, due = parse_date(fm.get("last_reviewed")), parse_date(fm.get("next_review_due"))
    if reviewed and due and due < reviewed:
        add("`next_review_due` is before `last_reviewed`", WARNING)

    # indicator_rules: finding -> indicator
    rules = fm.get("indicator_rules")
    escalates = False
    if rules is not None:
        if not isinstance(rules, dict):
            add("`indicator_rules` must map finding keys to indicators")
        else:
            for finding, indicator in rules.items():
                if indicator not in INDICATORS:
                    add(f"indicator_rules.{finding}: must be one of {', '.join(INDICATORS)}")
                elif SEVERITY[indicator] >= SEVERITY["warning"]:
                    escalates = True
                if str(finding) not in KNOWN_FINDINGS:
                    add(f"indicator_rules: finding {finding!r} is not set by any rule", WARNING,
                        "unknown-finding")

    # Override reasons: required on warning/critical cards (and cards that can escalate to them).
    reasons = fm.get("override_reasons")
    needs_reasons = fm.get("indicator") in ("warning", "critical") or escalates
    if reasons is None or reasons == []:
        if needs_reasons:
            add("a warning/critical card needs `override_reasons` (CDS Hooks overrideReasons)",
                kind="override-reasons")
    elif not isinstance(reasons, list):
        add("`override_reasons` must be a list of {code, display}", kind="override-reasons")
    else:
        seen: set[str] = set()
        for index, reason in enumerate(reasons):
            if not isinstance(reason, dict) or not isinstance(reason.get("code"), str) \
                    or not isinstance(reason.get("display"), str) or not reason["code"].strip() \
                    or not reason["display"].strip():
                add(f"override_reasons[{index}] needs a non-empty `code` and `display`",
                    kind="override-reasons")
                continue
            if reason["code"] in seen:
                add(f"override reason code {reason['code']!r} is listed twice", kind="override-reasons")
            seen.add(reason["code"])
            if not _CODE_TOKEN.match(reason["code"]):
                add(f"override reason code {reason['code']!r}: use lower-case letters, digits and '-'",
                    WARNING, "override-reasons")
            extra = set(reason) - {"code", "display"}
            if extra:
                add(f"override_reasons[{index}]: unknown key(s) {', '.join(sorted(extra))}", WARNING,
                    "override-reasons")

    problems += _check_suggestions_shape(card)
    problems += _check_links_shape(card)
    problems += _check_approval_shape(card)
    return problems


def _check_suggestions_shape(card: _CardFile) -> list[Problem]:
    problems: list[Problem] = []
    suggestions = card.meta.get("suggestions")
    if suggestions is None:
        return problems

    def add(message: str) -> None:
        problems.append(Problem(card.path.name, "suggestion", message, ERROR, card.card_id))

    if not isinstance(suggestions, list):
        add("`suggestions` must be a list")
        return problems
    for i, suggestion in enumerate(suggestions):
        if not isinstance(suggestion, dict) or not isinstance(suggestion.get("label"), str):
            add(f"suggestions[{i}] needs a `label`")
            continue
        if "is_recommended" in suggestion and not isinstance(suggestion["is_recommended"], bool):
            add(f"suggestions[{i}].is_recommended must be true or false")
        actions = suggestion.get("actions")
        if not isinstance(actions, list) or not actions:
            add(f"suggestions[{i}] needs a non-empty `actions` list")
            continue
        for j, action in enumerate(actions):
            where = f"suggestions[{i}].actions[{j}]"
            if not isinstance(action, dict):
                add(f"{where} must be a mapping")
                continue
            kind = action.get("type")
            if kind not in ACTION_TYPES:
                add(f"{where}.type must be one of {', '.join(ACTION_TYPES)}")
            if not isinstance(action.get("description"), str) or not action["description"].strip():
                add(f"{where} needs a `description`")
            if kind == "delete" and not isinstance(action.get("resource_id"), str):
                add(f"{where}: a delete action needs `resource_id`")
            if kind in ("create", "update"):
                resource = action.get("resource")
                if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                    add(f"{where}: a {kind} action needs `resource` with a `resourceType`")
    return problems


def _check_links_shape(card: _CardFile) -> list[Problem]:
    links = card.meta.get("links")
    if links is None:
        return []
    problems: list[Problem] = []
    if not isinstance(links, list):
        return [Problem(card.path.name, "front-matter", "`links` must be a list of {label, url}",
                        ERROR, card.card_id)]
    for i, link in enumerate(links):
        if not isinstance(link, dict) or not isinstance(link.get("label"), str) \
                or not str(link.get("url", "")).startswith("https://"):
            problems.append(Problem(card.path.name, "front-matter",
                                    f"links[{i}] needs a `label` and an absolute https `url`", ERROR,
                                    card.card_id))
    return problems


def _check_approval_shape(card: _CardFile) -> list[Problem]:
    problems: list[Problem] = []
    approval = card.meta.get("approval")
    status = card.meta.get("status")

    def add(message: str, severity: str = ERROR) -> None:
        problems.append(Problem(card.path.name, "approval", message, severity, card.card_id))

    if approval is None:
        if status == "approved":
            add("status is approved but there is no `approval` block; use `cds-service cards approve`")
        return problems
    if not isinstance(approval, dict):
        add("`approval` must be a mapping {reviewer, date, content_hash}")
        return problems
    if not isinstance(approval.get("reviewer"), str) or not approval["reviewer"].strip():
        add("approval.reviewer must be a non-empty string")
    if not _is_date(approval.get("date")):
        add("approval.date must be a date (YYYY-MM-DD)")
    if not isinstance(approval.get("content_hash"), str) or not _SHA256.match(approval["content_hash"]):
        add("approval.content_hash must be a SHA-256 hex digest")
    extra = set(approval) - {"reviewer", "date", "content_hash"}
    if extra:
        add(f"approval: unknown key(s) {', '.join(sorted(extra))}")
    if status != "approved":
        add(f"an `approval` block is present but the status is {status!r}: the card is not served under "
            "approved-only", WARNING)
    return problems


@contextmanager
def _loadable_copy(cards_dir: Path, broken_cards: set[str], bad_valuesets: set[str]) -> Iterator[Path]:
    """``cards_dir`` itself, or a temporary copy without the files that cannot be loaded at all."""
    if not broken_cards and not bad_valuesets:
        yield cards_dir
        return
    with tempfile.TemporaryDirectory(prefix="cards-check-") as tmp:
        target = Path(tmp) / cards_dir.name
        shutil.copytree(cards_dir, target, ignore=lambda d, names: [
            n for n in names if (Path(d) == cards_dir and n in broken_cards)
            or (Path(d) == cards_dir / "valuesets" and n in bad_valuesets)])
        yield target


def _check_catalog(catalog: Catalog, today: date) -> list[Problem]:
    problems: list[Problem] = []
    for card_id, card in catalog.cards.items():
        approval = card.approval
        if approval and approval.get("content_hash") != catalog.hashes[card_id]:
            problems.append(Problem(card.path.name, "stale-approval",
                                    f"approved by {approval.get('reviewer')} on {approval.get('date')}, but "
                                    "the content changed since (hash mismatch): re-approve it, or it is "
                                    "withheld under approved-only", ERROR, card_id))
        due = parse_date(card.meta.get("next_review_due"))
        if due is not None and due < today and card.status != "retired":
            problems.append(Problem(card.path.name, "review-overdue",
                                    f"next review was due {due.isoformat()}"
                                    + (": withheld under approved-only" if card.status == "approved" else ""),
                                    WARNING, card_id))
    return problems


# -- renderings ----------------------------------------------------------------------------------

def synthetic_variables(terminology: Terminology, maximal: bool) -> TemplateVariables:
    """Template variables with the longest plausible values (``maximal``) or every optional value empty."""
    long_id = "x" * 64  # FHIR ids are at most 64 characters
    day = "2026-11-22"

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
                                                  date=day if maximal else None,
                                                  reference=f"Observation/{long_id}" if maximal else None)
    if not maximal:
        return TemplateVariables(antibodies=antibodies)

    def lab(flag: str) -> LabView:
        return LabView(value=1234.56, unit="mL/min/{1.73_m2}", text="1234.56 mL/min/{1.73_m2}", date=day,
                       flag=flag, reference=f"Observation/{long_id}")

    return TemplateVariables(
        weight_kg=188.88, weight_date=day,
        order_display=longest_display("medication-ivig", "immune globulin intravenous")[0],
        order_reference=f"MedicationRequest/{long_id}",
        order_references=[f"MedicationRequest/{long_id}"],
        antibodies=antibodies, egfr=lab("low"), creatinine=lab("high"), iga=lab("low"),
        therapy=longest_display("medication-first-line", "first-line agent", 3),
    )


def _synthetic_facts(terminology: Terminology) -> list[Fact]:
    titles = sorted((vs.title for vs in terminology.value_sets.values()), key=len, reverse=True)[:2]
    titles = titles or ["Fact"]
    facts = [Fact(label=titles[0], value_key="strong-positive", date="2026-11-22",
                  reference="Observation/" + "x" * 64)]
    facts += [Fact(label=title, value_text="1234.56 mL/min/{1.73_m2} (low)", date="2026-11-22",
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
            found |= _finding_literals(make_environment().parse(source))
        except TemplateSyntaxError:
            continue
    return found


def _check_synthetic_renderings(catalog: Catalog) -> list[Problem]:
    """Render every card with synthetic contexts: all findings / none / each one, maximal / empty values."""
    problems: list[Problem] = []
    maximal = synthetic_variables(catalog.terminology, True)
    empty = synthetic_variables(catalog.terminology, False)
    facts = _synthetic_facts(catalog.terminology)
    notes = _synthetic_notes(catalog)
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
            decision = Decision(CardId(card_id) if card_id in CARD_IDS else card_id,  # type: ignore[arg-type]
                                list(used), set(findings))  # type: ignore[arg-type]
            problems += _check_one_rendering(catalog, card, decision, variables, data_notes,
                                             f"synthetic context ({label})")
    return _collapse(problems)


def _collapse(problems: list[Problem]) -> list[Problem]:
    """One problem per (file, kind, severity): the same template fault shows in many contexts."""
    first: dict[tuple[str, str, str], Problem] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for problem in problems:
        key = (problem.file, problem.kind, problem.severity)
        first.setdefault(key, problem)
        counts[key] = counts.get(key, 0) + 1
    collapsed = []
    for key, problem in first.items():
        more = counts[key] - 1
        if more:
            problem = dataclasses.replace(problem, message=f"{problem.message} (and {more} more context(s))")
        collapsed.append(problem)
    return collapsed


def _check_one_rendering(catalog: Catalog, card: CardContent, decision: Decision,
                         variables: TemplateVariables, notes: list[DataNote], where: str) -> list[Problem]:
    try:
        rendered = Renderer(catalog).render(decision, variables, notes, "https://cds.example.org", "all",
                                            patient_id="x" * 64)
    except RenderError as exc:
        if isinstance(exc.cause, UndefinedError):
            return [Problem(card.path.name, "placeholder", f"{where}: {exc.cause.message}", ERROR, card.id)]
        return [Problem(card.path.name, "template", f"{where}: rendering fails: {type(exc.cause).__name__}: "
                        f"{_short_error(exc.cause)}", ERROR, card.id)]
    return _check_rendered(card, rendered.to_json(), rendered.full_summary, where)


def _check_rendered(card: CardContent, rendered: Mapping[str, Any], summary: str | None,
                    where: str) -> list[Problem]:
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
    for line in detail.splitlines():
        if _GLUED_LIST_ITEM.search(line) and not line.lstrip().startswith("`"):
            problems.append(Problem(card.path.name, "markdown",
                                    f"{where}: a list item is glued to the previous line (a `{{%-` or "
                                    f"`{{%- endif %}}` ate a line break): {line.strip()[:120]!r}", WARNING,
                                    card.id))
            break
    return problems


def _fhir_problem(resource: Mapping[str, Any]) -> str | None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(str(resource.get("resourceType")))
    except Exception:
        return f"unknown resourceType {resource.get('resourceType')!r}"
    try:
        model.model_validate(dict(resource))
    except Exception as exc:
        return _short_error(exc)
    return None


# -- the real pipeline over every fixture -----------------------------------------------------------

def _pipeline_runtime(cards_dir: Path, fixtures_dir: Path, catalog: Catalog | None = None) -> Any:
    from cds_service.engine.runtime import Runtime
    from cds_service.settings import load_settings

    settings = load_settings({"AUTH": "off", "CONTENT_POLICY": "all", "DATABASE_URL": "sqlite://",
                              "CARDS_DIR": str(cards_dir), "FIXTURES_DIR": str(fixtures_dir),
                              "AUDIT_KEY": "governance-check"})
    runtime = Runtime.build(settings)
    if catalog is not None:
        runtime = dataclasses.replace(runtime, catalog=catalog)
    return runtime


def _call_fixture(runtime: Any, fixture: Mapping[str, Any], hook: str, today: date | None = None) -> Any:
    from cds_service.devtools.fixtures import build_request
    from cds_service.protocol import Limits, parse_request

    service = next(s for s in runtime.services.values() if s.hook == hook)
    payload = build_request(fixture, hook, templates=service.prefetch, today=today)
    request = parse_request(payload, hook, Limits())
    return pipeline.run(runtime, service, request)


def _check_pipeline(catalog: Catalog, runtime: Any, fixtures_dir: Path) -> list[Problem]:
    """Every fixture through the real pipeline (CONTENT_POLICY=all), both hooks; check what it renders."""
    from cds_service.devtools.fixtures import list_fixtures, load_fixture

    problems: list[Problem] = []
    rendered: list[Problem] = []
    names = list_fixtures(fixtures_dir)
    if not names:
        return [Problem(fixtures_dir.name, "fixture", f"no fixtures in {fixtures_dir}", WARNING)]
    for name in names:
        where_fx = f"{fixtures_dir.name}/{name}.json"
        try:
            fixture = load_fixture(name, fixtures_dir)
        except Exception as exc:
            problems.append(Problem(where_fx, "fixture", f"cannot be read: {_short_error(exc)}"))
            continue
        expected_raw = fixture.get("expected")
        expected: dict[str, Any] = expected_raw if isinstance(expected_raw, dict) else {}
        for hook in HOOKS:
            for card_id in expected.get(hook, []) or []:
                if card_id not in catalog.cards:
                    problems.append(Problem(where_fx, "missing-card",
                                            f"{hook} expects card {card_id!r}, but there is no "
                                            f"{card_id}.md", ERROR, card_id))
            try:
                result = _call_fixture(runtime, fixture, hook)
            except RenderError as exc:
                card = catalog.cards[exc.card_id]
                problems.append(Problem(card.path.name, "template",
                                        f"fixture {name} ({hook}): rendering fails: "
                                        f"{type(exc.cause).__name__}: {_short_error(exc.cause)}", ERROR, card.id))
                continue
            except Exception as exc:
                problems.append(Problem(where_fx, "pipeline", f"{hook}: the call fails: "
                                        f"{type(exc).__name__}: {_short_error(exc)}"))
                continue
            for withheld in result.withheld:
                if withheld.reason == "no-content":
                    problems.append(Problem(where_fx, "missing-card",
                                            f"{hook}: the rules chose card {withheld.card_id!r}, "
                                            "which has no content file", ERROR, withheld.card_id))
            for item in result.cards:
                if item.card_id in catalog.cards:
                    rendered += _check_rendered(catalog.cards[item.card_id], item.to_json(), item.full_summary,
                                                f"fixture {name} ({hook})")
    return problems + _collapse(rendered)


def _low_confidence(terminology: Terminology) -> list[Problem]:
    return [Problem(f"valuesets/{vs_id}.json", "low-confidence-code",
                    f"{concept.confidence}: {concept.system}|{concept.code} {concept.display!r}"
                    + (f" (source: {concept.source})" if concept.source else ""), INFO)
            for vs_id, concept in terminology.low_confidence()]


def format_report(problems: Sequence[Problem], cards_dir: Path, fixtures_dir: Path) -> str:
    """The readable ``cards check`` report."""
    errors = [p for p in problems if p.severity == ERROR]
    warnings = [p for p in problems if p.severity == WARNING]
    infos = [p for p in problems if p.severity == INFO]
    out = [f"cards check: {cards_dir} (fixtures: {fixtures_dir})", ""]
    for title, items in (("ERRORS", errors), ("WARNINGS", warnings)):
        if items:
            out.append(f"{title} ({len(items)})")
            out += [f"  {p.file}  [{p.kind}]  {p.message}" for p in items]
            out.append("")
    if infos:
        out.append(f"Low/medium-confidence codes ({len(infos)}) — verify before approval")
        out += [f"  {p.file}  {p.message}" for p in infos]
        out.append("")
    verdict = "FAILED" if errors else "OK"
    out.append(f"Result: {verdict} — {len(errors)} error(s), {len(warnings)} warning(s), "
               f"{len(infos)} code(s) to verify")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# cards approve
# --------------------------------------------------------------------------------------------------

def _front_matter_bounds(lines: list[str]) -> int:
    """Index of the closing ``---`` line of the front matter (the opening one is line 0)."""
    if not lines or lines[0].strip() != "---":
        raise GovernanceError("the card has no YAML front matter")
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return index
    raise GovernanceError("the card's front matter is not closed by '---'")


def _key_block(lines: list[str], start: int, end: int, key: str) -> tuple[int, int] | None:
    """[first, last) line range of a top-level YAML key (its line and its indented continuation)."""
    for index in range(start, end):
        match = _TOP_LEVEL_KEY.match(lines[index])
        if match and match.group(1) == key:
            stop = index + 1
            while stop < end and (lines[stop].startswith((" ", "\t")) or not lines[stop].strip()):
                stop += 1
            while stop - 1 > index and not lines[stop - 1].strip():
                stop -= 1  # trailing blank lines belong to what follows
            return index, stop
    return None


def with_approval(text: str, reviewer: str, day: date, content_hash: str | None) -> str:
    """The card text with ``status: approved`` and (when ``content_hash``) the approval block, edited
    textually so that comments and layout of the rest of the front matter survive."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.replace("\r\n", "\n").split("\n")
    end = _front_matter_bounds(lines)
    status = _key_block(lines, 1, end, "status")
    if status is None:
        anchor = _key_block(lines, 1, end, "version") or _key_block(lines, 1, end, "id")
        position = anchor[1] if anchor else 1
        lines.insert(position, "status: approved")
        end += 1
    else:
        first, last = status
        quoted_end = lines[first].rstrip().endswith(("'", '"'))
        comment = None if quoted_end else re.search(r"\s+#.*$", lines[first])
        lines[first:last] = ["status: approved" + (comment.group(0) if comment else "")]
        end -= (last - first) - 1
    block = _key_block(lines, 1, end, "approval")
    new_block = [] if content_hash is None else [
        "approval:",
        f"  reviewer: {json.dumps(reviewer, ensure_ascii=False)}",
        f"  date: {day.isoformat()}",
        f"  content_hash: {content_hash}",
    ]
    if block is not None:
        lines[block[0]:block[1]] = new_block
    else:
        insert_at = end
        while insert_at - 1 > 0 and not lines[insert_at - 1].strip():
            insert_at -= 1
        lines[insert_at:insert_at] = new_block
    return newline.join(lines)


@dataclass(frozen=True)
class Approval:
    card_id: str
    reviewer: str
    date: date
    content_hash: str
    path: Path


def approve(cards_dir: str | Path, card_id: str, reviewer: str, today: date | None = None,
            fixtures_dir: str | Path | None = None) -> Approval:
    """Record ``reviewer``'s approval of the card's current text (``status: approved`` + approval block
    bound to the content hash).  Refuses content that fails ``check``."""
    cards_dir = Path(cards_dir)
    today = today or datetime.now(UTC).date()
    reviewer = " ".join(str(reviewer).split())
    if not reviewer:
        raise GovernanceError("a reviewer name is required")
    path = cards_dir / f"{card_id}.md"
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", card_id) or not path.is_file():
        raise GovernanceError(f"no card {card_id!r} in {cards_dir}")
    if fixtures_dir is None:
        from cds_service.settings import load_settings

        fixtures_dir = load_settings().FIXTURES_DIR
    blocking = [p for p in check(cards_dir, fixtures_dir, today)
                if p.severity == ERROR and (p.card_id in (None, card_id))
                and not (p.kind == "stale-approval" and p.card_id == card_id)]
    if blocking:
        details = "\n".join(f"  {p}" for p in blocking)
        raise GovernanceError(f"{card_id} cannot be approved: `cards check` reports errors:\n{details}")
    original = path.read_text(encoding="utf-8")
    card_meta, _ = split_front_matter(original, path.name)
    if card_meta.get("status") == "retired":
        raise GovernanceError(f"{card_id} is retired: a retired card is never served; "
                              "change its status first")
    due = parse_date(card_meta.get("next_review_due"))
    if due is None or due < today:
        raise GovernanceError(f"{card_id}: next_review_due ({card_meta.get('next_review_due')}) has "
                              "passed: set the next review date before approving")

    # The hash covers the status (approved) but not the approval block: compute it on the new text.
    unapproved = with_approval(original, reviewer, today, None)
    catalog = Catalog.load(cards_dir)
    new_meta, new_body = split_front_matter(unapproved, path.name)
    catalog.cards[card_id] = CardContent(card_id, new_meta, normalise_body(new_body), path)
    content_hash = catalog.compute_hash(card_id)
    approved_text = with_approval(original, reviewer, today, content_hash)
    path.write_text(approved_text, encoding="utf-8")
    reloaded = Catalog.load(cards_dir)
    if reloaded.hashes.get(card_id) != content_hash or reloaded.servable(card_id, "approved-only", today):
        path.write_text(original, encoding="utf-8")
        raise GovernanceError(f"{card_id}: the approval did not verify after writing; the file was restored")
    return Approval(card_id, reviewer, today, content_hash, path)


# --------------------------------------------------------------------------------------------------
# Review packet
# --------------------------------------------------------------------------------------------------

_PACKET_LOCK = threading.Lock()
_PACKET_CACHE: dict[int, tuple[weakref.ref[Catalog], dict[tuple[str, str], dict[str, Any]]]] = {}


def review_packet(catalog: Catalog, fixtures_dir: str | Path, today: date | None = None) -> dict[str, Any]:
    """Everything a compliance reviewer reads, per card; computed once per catalog (and day).

    The returned dict is shared between callers: treat it as read-only.
    """
    today = today or datetime.now(UTC).date()
    key = (str(fixtures_dir), today.isoformat())
    with _PACKET_LOCK:
        entry = _PACKET_CACHE.get(id(catalog))
        if entry is None or entry[0]() is not catalog:
            for stale in [k for k, (ref, _) in _PACKET_CACHE.items() if ref() is None]:
                del _PACKET_CACHE[stale]
            entry = (weakref.ref(catalog), {})
            _PACKET_CACHE[id(catalog)] = entry
        packets = entry[1]
        if key not in packets:
            if len(packets) >= 4:
                packets.clear()
            packets[key] = _build_packet(catalog, Path(fixtures_dir), today)
        return packets[key]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _valueset_entry(terminology: Terminology, vs_id: str) -> dict[str, Any]:
    if vs_id not in terminology:
        return {"id": vs_id, "missing": True, "title": vs_id, "concepts": [], "filters": [], "aliases": [],
                "excludes": []}
    vs = terminology[vs_id]
    filters = []
    for include in vs.resource.get("compose", {}).get("include", []) or []:
        for flt in include.get("filter", []) or []:
            filters.append({"system": include.get("system", ""), "property": flt.get("property", ""),
                            "op": flt.get("op", ""), "value": flt.get("value", "")})

    def extension_values(url: str) -> list[str]:
        return [str(e.get("valueString")) for e in vs.resource.get("extension", []) or []
                if isinstance(e, dict) and e.get("url") == url]

    return {
        "id": vs.id, "missing": False, "title": vs.title, "url": vs.url, "version": vs.version,
        "description": str(vs.resource.get("description", "")),
        "concepts": [{"system": c.system, "code": c.code, "display": c.display, "confidence": c.confidence,
                      "source": c.source} for c in vs.concepts],
        "filters": filters,
        "aliases": extension_values(EXT_ALIAS),
        "excludes": extension_values(EXT_ALIAS_EXCLUDE),
    }


def _representatives(fixtures_dir: Path, card_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    from cds_service.devtools.fixtures import list_fixtures, load_fixture

    wanted = set(card_ids)
    found: dict[str, tuple[str, str]] = {}
    for name in list_fixtures(fixtures_dir):
        try:
            expected = load_fixture(name, fixtures_dir).get("expected") or {}
        except Exception:  # noqa: S112 - an unreadable fixture is reported by `cards check`
            continue
        for hook in HOOKS:
            for card_id in expected.get(hook, []) or []:
                if card_id in wanted and card_id not in found:
                    found[card_id] = (name, hook)
        if wanted <= set(found):
            break
    return found


def _examples(catalog: Catalog, fixtures_dir: Path, today: date) -> dict[str, dict[str, Any]]:
    from cds_service.devtools.fixtures import load_fixture

    chosen = _representatives(fixtures_dir, catalog.cards)
    examples: dict[str, dict[str, Any]] = {}
    if not chosen:
        return examples
    try:
        runtime = _pipeline_runtime(catalog.directory, fixtures_dir, catalog)
    except Exception as exc:
        failure = f"the service cannot start: {_short_error(exc)}"
        return {card_id: {"fixture": name, "hook": hook, "error": failure}
                for card_id, (name, hook) in chosen.items()}
    results: dict[tuple[str, str], Any] = {}
    try:
        for card_id, (name, hook) in chosen.items():
            example: dict[str, Any] = {"fixture": name, "hook": hook}
            try:
                fixture = load_fixture(name, fixtures_dir)
                example["description"] = str(fixture.get("description", ""))
                if (name, hook) not in results:
                    results[(name, hook)] = _call_fixture(runtime, fixture, hook, today)
                result = results[(name, hook)]
            except Exception as exc:
                example["error"] = f"{type(exc).__name__}: {_short_error(exc)}"
                examples[card_id] = example
                continue
            card = next((c for c in result.body.get("cards", [])
                         if c.get("source", {}).get("topic", {}).get("code") == card_id), None)
            if card is None:
                reason = next((w.reason for w in result.withheld if w.card_id == card_id), None)
                example["error"] = (f"not served for this patient ({reason})" if reason
                                    else "the service did not return this card for this patient")
            else:
                example.update(summary=card["summary"], detail=card["detail"], indicator=card["indicator"],
                               card=card)
            examples[card_id] = example
    finally:
        runtime.store.close()
    return examples


def _card_entry(catalog: Catalog, card_id: str, today: date,
                example: dict[str, Any] | None) -> dict[str, Any]:
    card = catalog.cards[card_id]
    fm = card.meta
    current = catalog.hashes[card_id]
    approval = card.approval
    approval_matches = None if approval is None else approval.get("content_hash") == current
    reason = catalog.servable(card_id, "approved-only", today)
    citations = []
    for key in fm.get("citations", []) or []:
        ref = catalog.references.get(str(key))
        citations.append({"key": str(key), "text": bibliographic(ref) if isinstance(ref, dict) else "",
                          "url": ref.get("url") if isinstance(ref, dict) else None,
                          "note": str(ref.get("note", "")) if isinstance(ref, dict) else "",
                          "missing": not isinstance(ref, dict)})
    due = parse_date(fm.get("next_review_due"))
    return _jsonable({
        "id": card_id,
        "title": str(fm.get("title", card_id)),
        "version": card.version,
        "status": card.status,
        "approval": dict(approval) if approval else None,
        "content_hash": current,
        "approval_matches": approval_matches,
        "servable": reason is None,
        "withheld_reason": reason,
        "withheld_explanation": None if reason is None else WITHHELD_WORDS.get(
            reason, f"the status is {card.status}, not approved" if reason.startswith("status-") else reason),
        "owner": fm.get("owner"),
        "last_reviewed": fm.get("last_reviewed"),
        "next_review_due": fm.get("next_review_due"),
        "review_overdue": due is not None and due < today,
        "hti1": {
            "developer": fm.get("developer"),
            "funding_source": fm.get("funding_source"),
            "release_date": fm.get("release_date"),
            "revision_date": fm.get("revision_date"),
            "citations": citations,
        },
        "trigger": " ".join(str(fm.get("trigger", "")).split()),
        "indicator": fm.get("indicator"),
        "indicator_rules": fm.get("indicator_rules") or {},
        "summary_template": str(fm.get("summary", "")),
        "body_source": card.body,
        "example": example,
        "override_reasons": [r for r in fm.get("override_reasons", []) or [] if isinstance(r, dict)],
        "override_reason_system": catalog.shared.get("override_reason_system"),
        "suggestions": fm.get("suggestions") or [],
        "links": Renderer(catalog).links(card),
        "valuesets": [_valueset_entry(catalog.terminology, str(v)) for v in fm.get("valuesets", []) or []],
        "path": card.path.name,
    })


def _build_packet(catalog: Catalog, fixtures_dir: Path, today: date) -> dict[str, Any]:
    examples = _examples(catalog, fixtures_dir, today)
    cards = [_card_entry(catalog, card_id, today, examples.get(card_id)) for card_id in sorted(catalog.cards)]
    summary = [{key: card[key] for key in ("id", "title", "version", "status", "indicator", "approval",
                                           "approval_matches", "servable", "withheld_reason",
                                           "withheld_explanation", "next_review_due", "review_overdue")}
               for card in cards]
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "today": today.isoformat(),
        "policy": "approved-only",
        "counts": {"cards": len(cards), "servable": sum(1 for c in cards if c["servable"]),
                   "value_sets": len(catalog.terminology.value_sets), "references": len(catalog.references)},
        "summary": summary,
        "cards": cards,
    }


def render_review_html(packet: Mapping[str, Any]) -> str:
    """The review packet as one self-contained HTML page (inline CSS, no scripts, no external assets)."""
    from cds_service.http.web.markdown import render_markdown

    env = Environment(loader=FileSystemLoader(str(TEMPLATES_DIR)), autoescape=select_autoescape(["html"]))
    css = (STATIC_DIR / "review.css").read_text(encoding="utf-8")
    if "</" in css:
        raise GovernanceError("review.css may not contain '</'")
    return env.get_template("review.html").render(packet=packet, md=render_markdown, single=None,
                                                  standalone=True,
                                                  inline_css=Markup(css))  # noqa: S704 - our own stylesheet


def export(cards_dir: str | Path, fixtures_dir: str | Path, out: str | Path, fmt: str = "html",
           today: date | None = None) -> Path:
    catalog = Catalog.load(Path(cards_dir))
    packet = review_packet(catalog, fixtures_dir, today)
    out = Path(out)
    if fmt == "json":
        text = json.dumps(packet, indent=2, ensure_ascii=False, default=str) + "\n"
    elif fmt == "html":
        text = render_review_html(packet)
    else:
        raise GovernanceError(f"unknown export format {fmt!r}: use html or json")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

REPORT_COLUMNS = ("card_id", "version", "shown", "accepted", "overridden", "override_reasons")


def report_rows(database_url: str, since: date) -> list[dict[str, Any]]:
    from cds_service.engine.store import Store

    store = Store(database_url)
    try:
        store.create_schema()
        return store.report(datetime(since.year, since.month, since.day, tzinfo=UTC))
    finally:
        store.close()


def format_rows(rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(list(rows), indent=2, ensure_ascii=False, default=str) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for row in rows:
        reasons = "; ".join(f"{label}: {count}"
                            for label, count in sorted(row.get("override_reasons", {}).items()))
        writer.writerow([row["card_id"], row["version"], row["shown"], row["accepted"], row["overridden"],
                         reasons])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# fixtures build
# --------------------------------------------------------------------------------------------------

def fixture_requests(fixtures_dir: str | Path, cards_dir: str | Path | None = None) -> dict[str, str]:
    """``<name>.<hook>.json`` -> the full request (with prefetch) as JSON text, for every fixture.

    Deterministic: the hookInstance is derived from the name and hook, and dates are not shifted (each
    request is built as of the fixture's own ``today``).
    """
    from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture
    from cds_service.engine.services import build_services, default_services

    services = (build_services(Terminology.load(Path(cards_dir) / "valuesets")) if cards_dir is not None
                else default_services())
    templates = {s.hook: dict(s.prefetch) for s in services.values()}
    files: dict[str, str] = {}
    for name in list_fixtures(Path(fixtures_dir)):
        fixture = load_fixture(name, Path(fixtures_dir))
        written = date.fromisoformat(str(fixture["today"]))
        for hook in HOOKS:
            instance = str(uuid.uuid5(uuid.NAMESPACE_URL,
                                      f"https://ivig-cds.example.org/fixtures/{name}/{hook}"))
            request = build_request(fixture, hook, templates=templates[hook], today=written,
                                    hook_instance=instance)
            files[f"{name}.{hook}.json"] = json.dumps(request, indent=2, ensure_ascii=False) + "\n"
    return files


def build_fixture_requests(fixtures_dir: str | Path, out_dir: str | Path | None = None,
                           cards_dir: str | Path | None = None) -> list[Path]:
    out = Path(out_dir) if out_dir is not None else Path(fixtures_dir) / "requests"
    out.mkdir(parents=True, exist_ok=True)
    files = fixture_requests(fixtures_dir, cards_dir)
    for stale in out.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def _defaults() -> tuple[str, str, str]:
    from cds_service.settings import load_settings

    settings = load_settings()
    return settings.CARDS_DIR, settings.FIXTURES_DIR, settings.DATABASE_URL


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _cmd_check(args: argparse.Namespace) -> int:
    cards_dir, fixtures_dir, _ = _defaults()
    cards = Path(args.cards_dir or cards_dir)
    fixtures = Path(args.fixtures_dir or fixtures_dir)
    problems = check(cards, fixtures)
    print(format_report(problems, cards, fixtures))
    return 1 if any(p.severity == ERROR for p in problems) else 0


def _cmd_approve(args: argparse.Namespace) -> int:
    cards_dir, fixtures_dir, _ = _defaults()
    try:
        result = approve(args.cards_dir or cards_dir, args.card_id, args.reviewer,
                         fixtures_dir=args.fixtures_dir or fixtures_dir)
    except GovernanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"approved {result.card_id} by {result.reviewer} on {result.date.isoformat()} "
          f"(content hash {result.content_hash}) -> {result.path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    cards_dir, fixtures_dir, _ = _defaults()
    try:
        path = export(args.cards_dir or cards_dir, args.fixtures_dir or fixtures_dir, args.out, args.format)
    except (GovernanceError, ContentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"review packet ({args.format}) written to {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    _, _, database_url = _defaults()
    try:
        rows = report_rows(args.database_url or database_url, args.since)
    except Exception as exc:  # the store is down or the URL is wrong: say so, without the URL
        print(f"error: the report could not be read from the store ({type(exc).__name__})", file=sys.stderr)
        return 1
    sys.stdout.write(format_rows(rows, args.format))
    return 0


def _cmd_fixtures_build(args: argparse.Namespace) -> int:
    _, fixtures_dir, _ = _defaults()
    fixtures = Path(args.fixtures_dir or fixtures_dir)
    out = Path(args.out_dir) if args.out_dir else fixtures / "requests"
    if args.check:
        expected = fixture_requests(fixtures, args.cards_dir)
        stale = sorted(n for n, text in expected.items()
                       if not (out / n).is_file() or (out / n).read_text(encoding="utf-8") != text)
        extra = sorted(p.name for p in out.glob("*.json") if p.name not in expected)
        for name in stale + extra:
            print(f"out of date: {out / name}")
        return 1 if stale or extra else 0
    written = build_fixture_requests(fixtures, out, args.cards_dir)
    print(f"{len(written)} request files in {out}")
    return 0


def add_commands(subparsers: Any) -> None:
    """``cards check|approve|export``, ``report`` and ``fixtures build`` on the ``cds-service`` CLI."""
    cards = subparsers.add_parser("cards", help="check, approve and export the card content")
    cards_sub = cards.add_subparsers(dest="cards_command", required=True)

    check_p = cards_sub.add_parser("check", help="validate all content; non-zero exit on any error")
    check_p.add_argument("--cards-dir", help="content directory (default: CDS_CARDS_DIR or ./cards)")
    check_p.add_argument("--fixtures-dir",
                         help="fixtures directory (default: CDS_FIXTURES_DIR or ./fixtures)")
    check_p.set_defaults(func=_cmd_check)

    approve_p = cards_sub.add_parser("approve", help="record an approval of a card's current text")
    approve_p.add_argument("card_id", help="the card id, e.g. ivig-safety")
    approve_p.add_argument("--reviewer", required=True, help="the clinical reviewer's name")
    approve_p.add_argument("--cards-dir", help="content directory (default: CDS_CARDS_DIR or ./cards)")
    approve_p.add_argument("--fixtures-dir", help="fixtures directory used by the check")
    approve_p.set_defaults(func=_cmd_approve)

    export_p = cards_sub.add_parser("export", help="write the review packet (one self-contained HTML file)")
    export_p.add_argument("--out", required=True, help="output file, e.g. review.html")
    export_p.add_argument("--format", choices=("html", "json"), default="html")
    export_p.add_argument("--cards-dir", help="content directory (default: CDS_CARDS_DIR or ./cards)")
    export_p.add_argument("--fixtures-dir", help="fixtures directory (representative renderings)")
    export_p.set_defaults(func=_cmd_export)

    report_p = subparsers.add_parser("report", help="per card and version: shown, accepted, overridden")
    report_p.add_argument("--since", required=True, type=_iso_date, help="YYYY-MM-DD (UTC)")
    report_p.add_argument("--format", choices=("csv", "json"), default="csv")
    report_p.add_argument("--database-url", help="SQLAlchemy URL (default: CDS_DATABASE_URL)")
    report_p.set_defaults(func=_cmd_report)

    fixtures = subparsers.add_parser("fixtures", help="fixture tooling")
    fixtures_sub = fixtures.add_subparsers(dest="fixtures_command", required=True)
    build_p = fixtures_sub.add_parser("build",
                                      help="write fixtures/requests/<name>.<hook>.json (full requests)")
    build_p.add_argument("--fixtures-dir",
                         help="fixtures directory (default: CDS_FIXTURES_DIR or ./fixtures)")
    build_p.add_argument("--out-dir", help="output directory (default: <fixtures-dir>/requests)")
    build_p.add_argument("--cards-dir",
                         help="value sets for the prefetch templates (default: the shipped cards)")
    build_p.add_argument("--check", action="store_true", help="only report files that are out of date")
    build_p.set_defaults(func=_cmd_fixtures_build)
