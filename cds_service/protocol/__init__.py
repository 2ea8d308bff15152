"""The CDS Hooks 2.0 wire format: request parsing and validation, response shaping."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from cds_service.errors import BadRequest, UnsupportedMediaType
from cds_service.protocol.card import INDICATOR_ORDER as INDICATOR_ORDER  # noqa: F401 (one definition, in card.py)
from cds_service.protocol.schema import first_error, property_error

if TYPE_CHECKING:
    from cds_service.settings import Settings

# The CDS Hooks this service answers (one service per hook).
HOOKS = ("order-select", "order-sign")

_JSON_TYPES = re.compile(r"^application/([a-z0-9.+-]*\+)?json$")


@dataclass(frozen=True)
class Limits:
    max_depth: int = 64
    max_prefetch_resources: int = 50_000
    max_draft_orders: int = 200
    max_string_length: int = 1_000_000
    max_feedback_items: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The request limits configured in ``settings`` (the ``MAX_*`` settings)."""
        return cls(max_depth=settings.MAX_JSON_DEPTH, max_prefetch_resources=settings.MAX_PREFETCH_RESOURCES,
                   max_draft_orders=settings.MAX_DRAFT_ORDERS, max_string_length=settings.MAX_STRING_LENGTH,
                   max_feedback_items=settings.MAX_FEEDBACK_ITEMS)


@dataclass
class HookRequest:
    """A validated hook call.  ``access_token`` is transient: never logged, never stored."""

    hook: str
    hook_instance: str
    context: dict[str, Any]
    prefetch: dict[str, Any] | None
    fhir_server: str | None = None
    access_token: str | None = field(default=None, repr=False)
    patient_id: str = ""
    user_id: str = ""
    encounter_id: str | None = None
    selections: list[str] = field(default_factory=list)
    draft_orders: list[dict[str, Any]] = field(default_factory=list)


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if not _JSON_TYPES.match(media):
        shown = media or "none"
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {shown}")


# JSON strings (unrolled loop: fast in the C regex engine), and brackets once strings are gone.
# On bytes: UTF-8 multi-byte sequences hold no ASCII byte, so a quote or bracket byte is that character.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_INNERMOST = re.compile(rb"\[\]|\{\}")
# Every byte but the four brackets.
_ALL_BUT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _depth_at_most(brackets: bytes, limit: int) -> bool | None:
    """True when the bracket skeleton nests at most ``limit`` deep; None when undecided.

    Each ``replace`` removes every adjacent pair of one kind, i.e. at least the innermost level
    of that kind, so a skeleton emptied in n replaces nests at most n deep.
    """
    passes = 0
    while brackets:
        if passes >= limit:
            return None
        reduced = brackets.replace(b"[]", b"").replace(b"{}", b"")
        passes += 2
        if reduced == brackets:
            return None  # unbalanced: brackets inside strings
        brackets = reduced
    return True


_BACKSLASH = ord("\\")


def _may_hold_long_string(raw: bytes, limit: int) -> bool:
    """False when ``raw`` certainly holds no string of more than ``limit`` characters; a few ``find``
    calls per megabyte instead of a pass over every byte.

    Such a string spans more than ``limit`` bytes, so it covers a whole window of ``limit // 2``
    bytes starting at a multiple of ``limit // 2``; inside a string every quote byte follows a
    backslash.  A window whose first quote follows no backslash is therefore not inside one.
    """
    half = limit // 2
    if half < 4096:  # small limits: many windows; the regex pass is as cheap
        return True
    for start in range(0, len(raw) - half + 1, half):  # whole windows only
        quote = raw.find(b'"', start, start + half)
        if quote == -1 or (quote > 0 and raw[quote - 1] == _BACKSLASH):
            return True
    return False


def _check_shape(raw: bytes, value: Any, limits: Limits) -> None:
    """Depth and string-length limits, in C-speed passes over the raw bytes (bytes methods, one
    regex); the decoded value is walked only when a fast pass finds a candidate long string.

    Depth: the bracket bytes alone, paired off level by level (brackets inside strings can only
    make this undecided, and then strings are removed and the exact count is taken).
    Strings: a string of more than n characters is a run of more than n bytes without a quote once
    escaped quotes are neutralised (escapes and multi-byte UTF-8 only make the run longer).
    """
    if len(raw) > limits.max_string_length and _may_hold_long_string(raw, limits.max_string_length):
        # Escaped backslashes, then escaped quotes, become two plain bytes: quotes are then only
        # string delimiters, and a raw run is at least as long as the string it encodes.
        plain = raw.replace(b"\\\\", b"__").replace(b'\\"', b"__") if b'\\"' in raw else raw
        long_string = re.compile(b'"[^"]{' + str(limits.max_string_length + 1).encode() + b"}")
        # A raw run can also lie between two strings, or overstate \uXXXX escapes: the decoded
        # value decides (reached only when the fast pass finds a candidate).
        if long_string.search(plain) and _longest_string(value) > limits.max_string_length:
            raise BadRequest(f"a JSON string is longer than {limits.max_string_length} characters",
                             code="string_too_long")
    if _depth_at_most(raw.translate(None, _ALL_BUT_BRACKETS), limits.max_depth):
        return
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw))
    for _ in range(limits.max_depth):
        if not brackets:
            return
        brackets = _INNERMOST.sub(b"", brackets)
    if brackets:
        raise BadRequest(f"JSON nested deeper than {limits.max_depth} levels", code="too_deep")


def parse_json(body: bytes, limits: Limits) -> Any:
    """Decode a request body (orjson, from the bytes) within ``limits``; ``BadRequest`` (400) otherwise.

    The decoder refuses what is not RFC 8259 JSON in UTF-8: invalid UTF-8 (CESU-8 surrogates
    included), lone UTF-16 surrogate escapes, NaN / Infinity, numbers that overflow a double
    (``1e999``, a 400-digit integer) -- ``invalid_json`` -- and nesting past 1,024 levels
    (``too_deep``).  An integer past 64 bits that fits a double is read as a float.
    Duplicate keys in an object: the last one wins (as in the standard library), silently.
    Depth (``max_depth``) and string length (``max_string_length``) are then checked on the raw
    bytes at C speed (``_check_shape``); counts, on the parts of the request that are read.
    """
    if not body:
        raise BadRequest("request body is empty; a JSON object is required", code="invalid_json")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if message.startswith(("depth limit exceeded", "recursion limit")):
            raise BadRequest(f"JSON nested deeper than {limits.max_depth} levels", code="too_deep") from None
        raise BadRequest(f"invalid JSON: {message[:200]}", code="invalid_json") from None
    _check_shape(body, value, limits)
    return value


def _strings(value: Any) -> Iterator[str]:
    """Every string (keys too) in a decoded JSON value, iteratively."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _longest_string(value: Any) -> int:
    return max((len(s) for s in _strings(value)), default=0)


def _count_prefetch_resources(prefetch: Mapping[str, Any]) -> int:
    count = 0
    for value in prefetch.values():
        if isinstance(value, Mapping):
            entries = value.get("entry")
            count += len(entries) if isinstance(entries, list) else 1
    return count


def check_prefetch(prefetch: Mapping[str, Any] | None, limits: Limits) -> None:
    """The prefetch's schema rule (each value a resource or null) and its count limit
    (``max_prefetch_resources``): ``BadRequest`` otherwise.  Called once the call is known to need the
    prefetch, before it is read (the scope decision needs the context only)."""
    if prefetch is None:
        return
    problem = property_error("request.json", "prefetch", prefetch)
    if problem:
        raise BadRequest(problem)
    if _count_prefetch_resources(prefetch) > limits.max_prefetch_resources:
        raise BadRequest(f"$.prefetch holds more than {limits.max_prefetch_resources} resources",
                         code="too_many_prefetch_resources")


def _check_counts(payload: dict[str, Any], limits: Limits) -> None:
    context = payload.get("context")
    if not isinstance(context, dict):
        return
    draft_orders = context.get("draftOrders")
    entries = draft_orders.get("entry") if isinstance(draft_orders, dict) else None
    if isinstance(entries, list) and len(entries) > limits.max_draft_orders:
        raise BadRequest(f"$.context.draftOrders has {len(entries)} entries; at most "
                         f"{limits.max_draft_orders} are accepted", code="too_many_draft_orders")
    selections = context.get("selections")
    if isinstance(selections, list) and len(selections) > limits.max_draft_orders:
        raise BadRequest(f"$.context.selections has {len(selections)} entries; at most "
                         f"{limits.max_draft_orders} are accepted", code="too_many_selections")


def parse_request(payload: Any, hook: str, limits: Limits) -> HookRequest:
    """Validate a hook request for a service whose hook is ``hook``; 400 with the JSON path on error."""
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_request")
    _check_counts(payload, limits)  # before the schema: validating 100,000 entries takes seconds
    problem = first_error("request.json", payload, deferred=("prefetch",))
    if problem:
        raise BadRequest(problem)
    if payload["hook"] != hook:
        raise BadRequest(f"$.hook is {payload['hook'][:80]!r} but this service answers the {hook!r} hook",
                         code="wrong_hook")
    context_schema = f"context-{hook}.json"
    problem = first_error(context_schema, payload["context"])
    if problem:
        raise BadRequest(problem.replace("$", "$.context", 1))
    context: dict[str, Any] = payload["context"]
    entries = context["draftOrders"].get("entry") or []
    if len(entries) > limits.max_draft_orders:
        raise BadRequest(f"$.context.draftOrders has {len(entries)} entries; at most "
                         f"{limits.max_draft_orders} are accepted", code="too_many_draft_orders")
    draft_orders = [e["resource"] for e in entries]
    # The prefetch is neither walked nor counted here: most calls are not about IVIG and are answered
    # from the context alone; ``check_prefetch`` runs when the prefetch is read (engine.pipeline).
    prefetch = payload.get("prefetch")
    # Only order-select has selections (its schema makes them a list of strings); whatever an
    # order-sign request carries there is ignored.
    selections = list(context.get("selections", [])) if hook == "order-select" else []
    # The schema checks each selection's Type/id form; one that names no draft order is tolerated
    # (there is nothing to decide for it), whatever characters the EHR's ids use.
    auth = payload.get("fhirAuthorization")
    return HookRequest(
        hook=hook,
        hook_instance=payload["hookInstance"],
        context=context,
        prefetch=prefetch,
        fhir_server=payload.get("fhirServer"),
        access_token=auth.get("access_token") if isinstance(auth, dict) else None,
        patient_id=context["patientId"],
        user_id=context["userId"],
        encounter_id=context.get("encounterId"),
        selections=selections,
        draft_orders=draft_orders,
    )


def parse_feedback(payload: Any, limits: Limits | None = None) -> list[dict[str, Any]]:
    if not isinstance(payload, dict):
        raise BadRequest("feedback body must be a JSON object with a 'feedback' array")
    most = (limits or Limits()).max_feedback_items
    given = payload.get("feedback")
    if isinstance(given, list) and len(given) > most:
        raise BadRequest(f"$.feedback has {len(given)} items; at most {most} are accepted",
                         code="too_many_feedback_items")
    problem = first_error("feedback.json", payload)
    if problem:
        raise BadRequest(problem)
    items: list[dict[str, Any]] = payload["feedback"]
    return items


_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
# 2.0 user tokens: the id part of context.userId when it names a resource of that type.
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def render_template(template: str, context: Mapping[str, Any], *, encode: bool = True) -> str | None:
    """A prefetch template with its 2.0 tokens filled from the hook context.

    ``{{context.x}}`` takes any root-level primitive context field; ``{{userPractitionerId}}``
    and friends take the id of ``context.userId`` when it names that resource type.  Values are
    URL-encoded unless ``encode`` is false.  None when a token cannot be resolved: clients leave
    such keys out, and the service does not query them.
    """
    unresolved = False

    def replace(match: re.Match[str]) -> str:
        nonlocal unresolved
        token = match.group(1)
        value: Any = None
        if token.startswith("context.") and token.count(".") == 1:
            value = context.get(token.removeprefix("context."))
        elif token in _USER_TOKENS:
            user = context.get("userId")
            prefix = _USER_TOKENS[token] + "/"
            if isinstance(user, str) and user.startswith(prefix):
                value = user.removeprefix(prefix)
        if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
            unresolved = True
            return ""
        return quote(str(value), safe="") if encode else str(value)

    rendered = _TOKEN.sub(replace, template)
    if unresolved or "{{" in rendered or "}}" in rendered:
        return None
    return rendered


def strip_empty(value: Any) -> Any:
    """Drop nulls and empty optional values (the spec: omit them), recursively."""
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            child = strip_empty(child)
            if child is None or child == "" or child == [] or child == {}:
                continue
            out[key] = child
        return out
    if isinstance(value, list):
        return [strip_empty(v) for v in value if v is not None]
    return value
