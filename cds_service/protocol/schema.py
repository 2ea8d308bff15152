"""Load the CDS Hooks JSON Schemas under ``schemas/`` and report the most useful validation error.

Schema names are file names without ``.json``: ``request``, ``context-order-select``,
``context-order-sign``, ``response``, ``feedback``, ``discovery``.

Error messages name the JSON path (``$.context.draftOrders.entry[0]``) and the rule that failed,
but never repeat a value from the instance: a request can carry an access token or patient data,
and these messages end up in logs and in 400 bodies.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator

SCHEMA_DIR = Path(__file__).with_name("schemas")
SCHEMA_NAMES: tuple[str, ...] = (
    "request",
    "context-order-select",
    "context-order-sign",
    "response",
    "feedback",
    "discovery",
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_KEY_CHARS = 40


def _normalise(name: str) -> str:
    stem = name.removesuffix(".json")
    if stem not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    return stem


@cache
def _load(stem: str) -> dict[str, Any]:
    with (SCHEMA_DIR / f"{stem}.json").open(encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


def load_schema(name: str) -> dict[str, Any]:
    """Return the schema called ``name`` (``"request"`` or ``"request.json"``).

    The file is read once; each call returns a deep copy, so callers (e.g. an OpenAPI builder) may
    modify the result freely. Raises ``ValueError`` for an unknown name.
    """
    return copy.deepcopy(_load(_normalise(name)))


@cache
def _validator(stem: str) -> Validator:
    Draft202012Validator.check_schema(_load(stem))
    return _checker(_inlined(stem))


def _checker(schema: dict[str, Any]) -> Validator:
    """A draft 2020-12 validator with format checking."""
    result: Validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return result


@cache
def _inlined(stem: str) -> dict[str, Any]:
    return _inline_refs(_load(stem))


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its local ``#/$defs/<name>`` references replaced by the definitions themselves,
    except where a definition refers back to itself (those stay references).  The same rules, checked
    without a registry look-up at every ``$ref`` on every request: that resolution was about half the
    cost of validating a hook request.  A ``$ref`` beside other keywords becomes ``allOf``, as 2020-12
    evaluates it."""
    defs: dict[str, Any] = schema.get("$defs", {})

    def refers_to(node: Any, name: str, seen: frozenset[str]) -> bool:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = ref.removeprefix("#/$defs/")
                if target == name or (target not in seen and refers_to(defs.get(target), name, seen | {target})):
                    return True
            return any(refers_to(v, name, seen) for k, v in node.items() if k != "$ref")
        if isinstance(node, list):
            return any(refers_to(v, name, seen) for v in node)
        return False

    recursive = {name for name in defs if refers_to(defs[name], name, frozenset({name}))}

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(v) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        name = ref.removeprefix("#/$defs/") if isinstance(ref, str) and ref.startswith("#/$defs/") else None
        dropped = name is not None and name not in recursive
        out = {k: inline(v) for k, v in node.items() if not (k == "$ref" and dropped)}
        if name is None or name in recursive or name not in defs:
            if name is not None and "$ref" not in out:
                out["$ref"] = ref
            return out
        target = inline(defs[name])
        if not out:
            return target
        out["allOf"] = [*out.get("allOf", []), target]
        return out

    inlined: dict[str, Any] = inline(schema)
    return inlined


@cache
def _envelope_validator(stem: str, deferred: tuple[str, ...]) -> Validator:
    """The schema with the ``deferred`` top-level properties checked for their type only."""
    schema = copy.deepcopy(_inlined(stem))
    for name in deferred:
        rule = schema["properties"][name]
        schema["properties"][name] = {"type": rule["type"]} if "type" in rule else {}
    return _checker(schema)


@cache
def _property_validator(stem: str, name: str) -> Validator:
    """The rule of one top-level property of a schema, as a schema of its own."""
    schema = _inlined(stem)
    return _checker({**schema["properties"][name], "$defs": schema.get("$defs", {})})


def validator(name: str) -> Validator:
    """Return the cached draft 2020-12 validator (with format checking) for schema ``name``."""
    return _validator(_normalise(name))


def json_path(parts: Iterable[str | int], root: str = "$") -> str:
    """Render a jsonschema path deque as JSONPath: ``$.context.draftOrders.entry[0]``."""
    out = root
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(_clip(part))}]"
    return out


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_KEY_CHARS else text[: _MAX_KEY_CHARS - 1] + "…"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quoted(names: Iterable[object]) -> str:
    return ", ".join(f"'{_clip(str(name))}'" for name in names)


def _describe(error: ValidationError) -> str:
    """Say what is wrong, using only the schema and the shape of the instance, never its values."""
    keyword = str(error.validator)
    expected: Any = error.validator_value
    instance: Any = error.instance
    if keyword == "required" and isinstance(instance, dict):
        missing = [name for name in expected if name not in instance]
        noun = "property" if len(missing) == 1 else "properties"
        return f"missing required {noun} {_quoted(missing)}"
    if keyword == "dependentRequired" and isinstance(instance, dict):
        for trigger, needed in expected.items():
            absent = [name for name in needed if name not in instance]
            if trigger in instance and absent:
                return f"{_quoted(absent)} is required when '{trigger}' is present"
    if keyword == "type":
        wanted = expected if isinstance(expected, list) else [expected]
        return f"expected {' or '.join(wanted)}, got {_json_type(instance)}"
    if keyword == "enum":
        return f"must be one of {', '.join(json.dumps(value) for value in expected)}"
    if keyword == "const":
        return f"must be {json.dumps(expected)}"
    if keyword == "pattern":
        return f"does not match the pattern {expected}"
    if keyword == "format":
        return f"is not a valid {expected}"
    if keyword in ("minLength", "maxLength") and isinstance(instance, str):
        bound = "at least" if keyword == "minLength" else "at most"
        return f"must be {bound} {expected} characters long (is {len(instance)})"
    if keyword in ("minItems", "maxItems") and isinstance(instance, list):
        bound = "at least" if keyword == "minItems" else "at most"
        return f"must have {bound} {expected} items (has {len(instance)})"
    if keyword in ("minProperties", "maxProperties") and isinstance(instance, dict):
        bound = "at least" if keyword == "minProperties" else "at most"
        return f"must have {bound} {expected} members (has {len(instance)})"
    if keyword == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(name for name in instance if name not in known)
        return f"unexpected {'property' if len(extra) == 1 else 'properties'} {_quoted(extra)}"
    return f"fails the '{keyword}' rule"


def first_error(name: str, instance: object, *, root: str = "$", deferred: tuple[str, ...] = ()) -> str | None:
    """Validate ``instance`` against schema ``name``; return ``None`` when valid, else one message.

    The message is ``"<JSON path>: <what is wrong>"`` for the error jsonschema's ``best_match``
    picks, e.g. ``"$.context.draftOrders.entry[0]: missing required property 'resource'"``.
    ``root`` names where ``instance`` sits in the document (pass ``"$.context"`` when validating a
    request's context on its own).  ``deferred``: top-level properties checked here for their type
    only, the rest of their rule later with ``property_error`` (a hook request's prefetch is checked
    only when the call reads it).
    """
    checker = _envelope_validator(_normalise(name), deferred) if deferred else validator(name)
    return _message(best_match(checker.iter_errors(instance)), root)


def property_error(name: str, prop: str, value: object, *, root: str = "$") -> str | None:
    """Validate ``value`` against the rule schema ``name`` gives its top-level property ``prop``."""
    member_types = _member_types(_normalise(name), prop)
    if member_types is not None and isinstance(value, dict) and all(
            type(member) in member_types for member in value.values()):
        return None  # what the rule says, read off the schema: no validator run for a valid value
    return _message(best_match(_property_validator(_normalise(name), prop).iter_errors(value)), f"{root}.{prop}")


# JSON Schema type names whose Python types are exact (orjson decodes to these and nothing else).
_EXACT_TYPES: dict[str, type] = {"object": dict, "array": list, "string": str, "null": type(None)}
_ANNOTATIONS = frozenset({"description", "title", "examples", "$comment"})


@cache
def _member_types(stem: str, prop: str) -> frozenset[type] | None:
    """When the rule of ``prop`` is only "an object whose values are of these types" (as the request
    schema's prefetch rule is), those Python types; else None (the validator decides)."""
    rule = _load(stem)["properties"][prop]
    members = rule.get("additionalProperties")
    if set(rule) - _ANNOTATIONS != {"type", "additionalProperties"} or rule["type"] != "object" \
            or not isinstance(members, dict) or set(members) - _ANNOTATIONS != {"type"}:
        return None
    names = members["type"] if isinstance(members["type"], list) else [members["type"]]
    if not all(n in _EXACT_TYPES for n in names):
        return None
    return frozenset(_EXACT_TYPES[n] for n in names)


def _message(error: ValidationError | None, root: str) -> str | None:
    if error is None:
        return None
    return f"{json_path(error.absolute_path, root)}: {_describe(error)}"
