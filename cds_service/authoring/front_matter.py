"""Card front matter: its shape by the JSON Schema ``schemas/card-front-matter.schema.json``, and the
relations between fields that a schema cannot say (dates in order, override reasons on cards that can
warn, finding keys the rules set, an approval block versus the status).

Each schema error becomes one readable ``Problem`` (file, field, what is wrong): the schema's
``x-message`` annotation words it, ``x-warning`` lowers its severity, ``x-kind`` names its kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, ValidationError

from cds_service.authoring.problems import ERROR, WARNING, Problem
from cds_service.clinical.contract import FINDINGS
from cds_service.clinical.dates import parse_date
from cds_service.engine.content import INDICATORS, SEVERITY

SCHEMA_PATH = Path(__file__).with_name("schemas") / "card-front-matter.schema.json"
DEFAULT_KIND = "front-matter"
# When one field fails several keywords, the first of these is the one worth reading.
_KEYWORD_RANK = {"type": 0, "format": 1, "pattern": 2, "minItems": 3, "enum": 4, "const": 4}
_VALUE_CHARS = 80


def _is_date(value: object) -> bool:
    """A YAML date (not a date-time) or an ISO 8601 date string."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return True
    if isinstance(value, str):
        try:
            date.fromisoformat(value)
        except ValueError:
            return False
        return True
    return False


@cache
def front_matter_schema() -> dict[str, Any]:
    """The card front matter schema (read once)."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


@cache
def _validator() -> Draft202012Validator:
    schema = front_matter_schema()
    Draft202012Validator.check_schema(schema)
    # YAML gives dates as ``datetime.date``: the "date" format takes those as well as ISO strings,
    # and refuses anything else (the standard checker would let a non-string pass).
    formats = FormatChecker(formats=())
    formats.checks("date")(_is_date)
    return Draft202012Validator(schema, format_checker=formats)


def _field(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS - 1] + "…"


def _message(error: ValidationError, field: str, value: Any, default: str) -> str:
    words = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if isinstance(words, dict):
        words = words.get(str(error.validator))
    allowed = error.validator_value if error.validator == "enum" else ()
    template = words if isinstance(words, str) else default
    return template.format(field=field, value=_shown(value), type=type(value).__name__,
                           allowed=", ".join(str(a) for a in allowed if a is not None))


def _severity(error: ValidationError) -> str:
    warn = error.schema.get("x-warning", ()) if isinstance(error.schema, dict) else ()
    return WARNING if error.validator in warn else ERROR


def _kind(top_level: object) -> str:
    spec = front_matter_schema()["properties"].get(top_level, {})
    return str(spec.get("x-kind", DEFAULT_KIND))


def schema_problems(meta: Mapping[str, Any], file: str, card_id: str | None) -> list[Problem]:
    """The schema's verdict on ``meta``: one problem per missing or unknown key, and one per field
    (its most telling error) for a value of the wrong shape."""
    problems: list[Problem] = []
    by_field: dict[tuple[Any, ...], tuple[tuple[int, int], Problem]] = {}
    for error in _validator().iter_errors(dict(meta)):
        path = tuple(error.absolute_path)
        severity = _severity(error)
        if error.validator in ("required", "additionalProperties"):
            instance = error.instance if isinstance(error.instance, dict) else {}
            if error.validator == "required":
                keys = [k for k in error.validator_value if k not in instance]
                default = "`{field}` is required"
            else:
                known = error.schema.get("properties", {})
                keys = sorted(str(k) for k in instance if k not in known)
                default = "unknown key `{field}`"
            for key in keys:
                where = path + (key,)
                problems.append(Problem(file, _kind(where[0]), _message(error, _field(where), None, default),
                                        severity, card_id))
            continue
        rank = (0 if severity == ERROR else 1, _KEYWORD_RANK.get(str(error.validator), 9))
        field = _field(path)
        problem = Problem(file, _kind(path[0]) if path else DEFAULT_KIND,
                          _message(error, field, error.instance, f"`{field}`: {error.message}"), severity, card_id)
        if path not in by_field or rank < by_field[path][0]:
            by_field[path] = (rank, problem)
    return list(dict.fromkeys(problems)) + [problem for _, problem in by_field.values()]


def relation_problems(meta: Mapping[str, Any], file: str, card_id: str | None) -> list[Problem]:
    """What the schema cannot say: relations between fields, and finding keys known to the rules."""
    problems: list[Problem] = []

    def add(kind: str, message: str, severity: str = ERROR) -> None:
        problems.append(Problem(file, kind, message, severity, card_id))

    released, revised = parse_date(meta.get("release_date")), parse_date(meta.get("revision_date"))
    if released and revised and revised < released:
        add(DEFAULT_KIND, "`revision_date` is before `release_date`", WARNING)
    reviewed, due = parse_date(meta.get("last_reviewed")), parse_date(meta.get("next_review_due"))
    if reviewed and due and due < reviewed:
        add(DEFAULT_KIND, "`next_review_due` is before `last_reviewed`", WARNING)

    rules = meta.get("indicator_rules")
    escalates = False
    if isinstance(rules, dict):
        for finding, indicator in rules.items():
            if indicator in INDICATORS and SEVERITY[indicator] >= SEVERITY["warning"]:
                escalates = True
            if str(finding) not in FINDINGS:
                add("unknown-finding", f"indicator_rules: finding {finding!r} is not set by any rule", WARNING)

    # Override reasons: required on warning/critical cards (and cards that can escalate to them).
    reasons = meta.get("override_reasons")
    if reasons is None or reasons == []:
        if meta.get("indicator") in ("warning", "critical") or escalates:
            add("override-reasons", "a warning/critical card needs `override_reasons` (CDS Hooks overrideReasons)")
    elif isinstance(reasons, list):
        codes = [str(r["code"]) for r in reasons if isinstance(r, dict) and isinstance(r.get("code"), str)]
        for code in sorted({c for c in codes if codes.count(c) > 1}):
            add("override-reasons", f"override reason code {code!r} is listed twice")

    approval, status = meta.get("approval"), meta.get("status")
    if approval is None and status == "approved":
        add("approval", "status is approved but there is no `approval` block; use `cds-service cards approve`")
    elif isinstance(approval, dict) and status != "approved":
        add("approval", f"an `approval` block is present but the status is {status!r}: the card is not served "
            "under approved-only", WARNING)
    return problems


def front_matter_problems(meta: Mapping[str, Any], file: str, card_id: str | None) -> list[Problem]:
    """Every front matter problem of one card file."""
    return schema_problems(meta, file, card_id) + relation_problems(meta, file, card_id)
