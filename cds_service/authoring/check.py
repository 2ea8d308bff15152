"""``cds-service cards check``: every content problem under ``cards/``, as errors, warnings and
low-confidence codes to verify.

Checked here: the shared files (``_shared.yaml``, ``references.yaml``), every value set (FHIR R4, and
compiled as the service would), every card file (front matter by ``front_matter.py``, placeholders are
template variables of the contract, finding keys the rules set, citations that resolve, value sets that
exist), then the catalogue the service would load (stale approvals, overdue reviews) and every rendering
(``renderings.py``).  The report format is ``format_report``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml
from fhir.resources.R4B.valueset import ValueSet as FhirValueSet
from jinja2 import TemplateSyntaxError, meta

from cds_service.authoring.calls import check_runtime
from cds_service.authoring.front_matter import front_matter_problems
from cds_service.authoring.problems import ERROR, INFO, WARNING, Problem, short_error, sorted_problems
from cds_service.authoring.renderings import INLINE_LINK, check_pipeline, check_synthetic_renderings, finding_literals
from cds_service.authoring.statements import statements
from cds_service.clinical.contract import FINDINGS, TEMPLATE_NAMES
from cds_service.clinical.dates import parse_date
from cds_service.engine.content import (
    CITATION,
    EXPERT_OPINION,
    ORIGIN,
    RATIONALE_MARKER,
    Catalog,
    ContentError,
    cited_keys,
    make_environment,
    normalise_body,
    split_front_matter,
    split_rationale,
)
from cds_service.terminology import Terminology, compile_value_set

REFERENCE_KEYS = frozenset({"authors", "title", "journal", "year", "volume", "pages", "doi", "pmid", "url",
                            "note", "short", "kind", "verified_at"})
REFERENCE_KINDS = frozenset({"guideline", "trial", "cohort", "systematic-review", "review", "label", ORIGIN})
#: Where a prescribing-information (label) URL may point: DailyMed or the FDA.
LABEL_HOSTS = ("https://dailymed.nlm.nih.gov/", "https://nctr-crs.fda.gov/", "https://www.fda.gov/",
               "https://www.accessdata.fda.gov/")
#: Cards still in the format before issue 13, being rewritten on another branch: their problems of the
#: issue-13 kinds are reported as warnings until the rewrite lands (then this set is emptied).
TRANSITIONAL: frozenset[str] = frozenset()
_ISSUE13_KINDS = frozenset({"statement", "rationale", "citation", "detail-length", "inline-link", "owner",
                            "origin-cited"})
_JINJA_TAG = re.compile(r"\{%.*?%\}|\{#.*?#\}")
_OWNER_PLACEHOLDER = re.compile(r"to be named|tbd|tba|to be confirmed|placeholder", re.I)
# What reading a malformed value set raises (a missing key, a list where a mapping belongs, …).
MALFORMED = (KeyError, TypeError, AttributeError, ValueError)


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
    references = _read_yaml_mapping(cards_dir / "references.yaml")
    card_files = _read_card_files(cards_dir, problems)
    for card_file in card_files:
        if card_file.meta:
            problems += _check_card_static(card_file, terminology, references)
    problems += _unused_references(references, card_files)
    if not shared_ok:
        return sorted_problems(_transitional(problems))
    broken = {c.path.name for c in card_files if not c.loadable}
    with _loadable_copy(cards_dir, broken, bad_valuesets) as directory:
        try:
            # The service as it would start on this content; its catalog is the one checked.
            runtime = check_runtime(directory, fixtures_dir)
        except Exception as exc:  # boundary: whatever stops the service from starting on
            # this content (ContentError, a template or YAML error in a half-written file) is reported.
            problems.append(Problem(cards_dir.name, "load", f"the content could not be loaded: {exc}"))
            return sorted_problems(_transitional(problems))
        try:
            catalog = runtime.catalog
            problems += _check_catalog(catalog, today)
            problems += check_synthetic_renderings(catalog)
            problems += check_pipeline(catalog, runtime, fixtures_dir)
        finally:
            runtime.store.close()
    problems += _low_confidence(terminology)
    return sorted_problems(_transitional(problems))


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The YAML file as a mapping; empty when it cannot be read (``_check_shared_files`` says why)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: an impossible date such as 2026-13-40
        return {}
    return data if isinstance(data, dict) else {}


def _check_shared_files(cards_dir: Path, problems: list[Problem]) -> bool:
    ok = True
    for name in ("_shared.yaml", "references.yaml"):
        path = cards_dir / name
        if not path.is_file():
            problems.append(Problem(name, "shared", f"{name} is missing"))
            ok = False
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as exc:
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
    for key in ("source_label", "override_reason_system", "unreviewed_label", "reviewed_label",
                "rationale_link_label", "disclaimer"):
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
        if ref.get("kind") not in REFERENCE_KINDS:
            problems.append(Problem(where, "reference", f"{key}: `kind` must be one of "
                                    f"{', '.join(sorted(REFERENCE_KINDS))}"))
    return problems


def identifier_problem(key: str, ref: Mapping[str, Any]) -> tuple[str, str] | None:
    """(severity, message) when evidence ``ref`` has neither PMID, DOI nor a label URL."""
    if ref.get("pmid") or ref.get("doi"):
        return None
    url = str(ref.get("url") or "")
    if ref.get("kind") == "label" and url.startswith(LABEL_HOSTS):
        return None
    if ref.get("kind") == "label" and url.startswith("https://"):
        return WARNING, (f"[{key}] is prescribing information on the manufacturer's site, not DailyMed/FDA: "
                         "replace the url once the DailyMed set id is verified")
    return ERROR, f"[{key}] has neither a PMID, a DOI nor a prescribing-information (DailyMed/FDA) URL"


def _unused_references(references: Mapping[str, Any], card_files: Sequence[_CardFile]) -> list[Problem]:
    used: set[str] = set()
    for card in card_files:
        used |= set(cited_keys(card.body))
        if isinstance(card.meta.get("citations"), list):
            used |= {str(c) for c in card.meta["citations"]}
    return [Problem("references.yaml", "reference", f"{key}: not cited by any card (remove it, or cite it)")
            for key, ref in references.items()
            if key not in used and not (isinstance(ref, dict) and ref.get("kind") == ORIGIN)]


def _transitional(problems: list[Problem]) -> list[Problem]:
    return [Problem(p.file, p.kind, f"(transitional, being rewritten elsewhere) {p.message}", WARNING, p.card_id)
            if p.card_id in TRANSITIONAL and p.severity == ERROR and p.kind in _ISSUE13_KINDS else p
            for p in problems]


def statement_problems(text: str, label: str, warning_card: bool) -> list[tuple[str, str]]:
    """(kind, message) for statements without a citation, and (in a warning card's detail) statements
    whose only basis is expert opinion."""
    found: list[tuple[str, str]] = []
    for statement in statements(text):
        keys = set(CITATION.findall(statement))
        if not keys:
            found.append(("statement", f"{label}: a statement has no citation: {statement[:100]!r}"))
        elif warning_card and keys <= {EXPERT_OPINION}:
            found.append(("statement", f"{label}: expert opinion is the only basis of a statement on a warning "
                          f"card: {statement[:100]!r}"))
    return found


def _check_valuesets(cards_dir: Path, problems: list[Problem]) -> set[str]:
    """Validate every value set file as a FHIR R4 ValueSet; the file names that cannot be loaded."""
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
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            problems.append(Problem(where, "valueset", f"not a valid FHIR R4 ValueSet: {short_error(exc)}"))
        if resource.get("id") != path.stem:
            problems.append(Problem(where, "valueset", f"id {resource.get('id')!r} must equal the file name"))
        try:
            compiled = compile_value_set(resource)
        except MALFORMED as exc:
            problems.append(Problem(where, "valueset", f"cannot be compiled: {short_error(exc)}"))
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


def _load_terminology(cards_dir: Path, bad: set[str]) -> Terminology:
    sets = []
    for path in sorted((cards_dir / "valuesets").glob("*.json")):
        if path.name in bad:
            continue
        try:
            sets.append(compile_value_set(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, *MALFORMED):  # noqa: S112 - already reported by _check_valuesets
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
        except ContentError as exc:  # no front matter, invalid YAML, an impossible date, not a mapping
            problems.append(Problem(path.name, "front-matter", str(exc).removeprefix(f"{path.name}: "),
                                    card_id=path.stem))
            files.append(_CardFile(path, path.stem, {}, "", False))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(path.name, "front-matter", f"the file cannot be read: {exc}",
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


def _check_card_static(card: _CardFile, terminology: Terminology,
                       references: Mapping[str, Any]) -> list[Problem]:
    name, card_id, fm = card.path.name, card.card_id, card.meta
    problems = front_matter_problems(fm, name, card_id)

    def add(kind: str, message: str, severity: str = ERROR) -> None:
        problems.append(Problem(name, kind, message, severity, card_id))

    # Placeholders: every name a template reads is a template variable of the contract.
    env = make_environment()
    sources: list[tuple[str, str]] = [("summary", str(fm.get("summary", ""))),
                                      ("body", normalise_body(card.body))]
    sources += [("suggestions", s) for s in _template_strings(fm.get("suggestions"))]
    for label, source in sources:
        try:
            ast = env.parse(source)
        except TemplateSyntaxError:
            continue  # reported by _read_card_files (or below for suggestion strings)
        unknown = sorted(meta.find_undeclared_variables(ast) - TEMPLATE_NAMES)
        if unknown:
            add("placeholder", f"{label}: unknown placeholder(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(TEMPLATE_NAMES))})")
        for finding in sorted(finding_literals(ast) - FINDINGS):
            add("unknown-finding", f"{label}: tests finding {finding!r}, which no rule sets", WARNING)
    for source in _template_strings(fm.get("suggestions")):
        try:
            env.parse(source)
        except TemplateSyntaxError as exc:
            add("template", f"suggestions: {exc.message} in {source[:60]!r}")

    # The issue-13 format: detail template, then <!-- rationale --> and a static rationale page.
    detail, rationale = split_rationale(card.body)
    if RATIONALE_MARKER not in card.body or not rationale.strip():
        add("rationale", f"no rationale page: the detail template must be followed by a line {RATIONALE_MARKER} "
            "and the rationale (Markdown)")
    elif "{{" in rationale or "{%" in rationale:
        add("rationale", "the rationale page is static: no template variables or tags after the marker")
    warning_card = fm.get("indicator") in ("warning", "critical") or any(
        str(v) in ("warning", "critical") for v in (fm.get("indicator_rules") or {}).values()) \
        if isinstance(fm.get("indicator_rules") or {}, dict) else False
    for kind, message in statement_problems(detail, "detail", warning_card) \
            + statement_problems(rationale, "rationale", False):
        add(kind, message)
    for label, text in (("detail", detail), ("rationale", rationale)):
        if INLINE_LINK.search(_JINJA_TAG.sub("", text)):
            add("inline-link", f"{label}: no inline links or URLs (references are numbered on the rationale page)")
    owner = str(fm.get("owner", ""))
    if _OWNER_PLACEHOLDER.search(owner):
        add("owner", f"the owner is a role, never a placeholder: {owner!r}")

    # Citations: front matter keys and every [key] in the body resolve in references.yaml.
    listed = [str(c) for c in fm.get("citations", []) or []] if isinstance(fm.get("citations"), list) else []
    in_text = cited_keys(card.body)
    for key in listed:
        if key not in references:
            add("citation", f"citation {key!r} is not in references.yaml")
        elif key not in in_text:
            add("citation", f"citation {key!r} is listed in the front matter but no statement cites it")
    for key in in_text:
        ref = references.get(key)
        if isinstance(ref, dict) and ref.get("kind") == ORIGIN:
            add("origin-cited", f"[{key}] is an origin (a seed), never evidence: cite the primary source")
        elif isinstance(ref, dict):
            problem = identifier_problem(key, ref)
            if problem:
                add("citation", problem[1], problem[0])
    for key in cited_keys(card.body):
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
